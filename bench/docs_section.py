"""One benchmark's section of docs/benchmarks.md, replaced in place (the other sections stay)."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` (starting with its ``## `` heading) where that heading's section is, or at the end."""
    heading = section.splitlines()[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, not {heading!r}")
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile("^" + re.escape(heading) + r"$.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def publish(section: str, out: str | None) -> None:
    """Print ``section``; with ``out`` (docs/benchmarks.md), also put it there."""
    print(section)
    if out:
        replace_section(Path(out), section)
