"""Which server paths the UI may touch: the workdir (read and write) and the ``--allow`` dirs (read only).

Every path a client names goes through :meth:`Roots.resolve`: relative paths are taken from the
workdir, symlinks are followed, and the real path must lie inside a root, so ``../``, an absolute
path elsewhere or a symlink pointing out are refused (403) before anything is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from paddle_ocrvl_sft.errors import UsageError


class Refused(Exception):
    """A client-named path the UI will not touch; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Roots:
    workdir: Path
    allowed: tuple[Path, ...] = ()  # read-only extra roots (shared datasets, downloaded models)

    @classmethod
    def create(cls, workdir: str | os.PathLike, allow=()) -> "Roots":
        resolved = []
        for label, path in [("--workdir", workdir), *(("--allow", a) for a in allow)]:
            real = Path(os.path.realpath(path))
            if not real.is_dir():
                raise UsageError(f"{label} {path}: not a directory")
            resolved.append(real)
        return cls(resolved[0], tuple(resolved[1:]))

    @property
    def readable(self) -> tuple[Path, ...]:
        return (self.workdir, *self.allowed)

    def inside(self, path: Path, *, write: bool = False) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == root or root in real.parents for root in ((self.workdir,) if write else self.readable))

    def resolve(self, text, *, write: bool = False, what: str = "path") -> Path:
        """The real path of a client-named ``text``, or :class:`Refused`."""
        if not isinstance(text, str) or not text.strip():
            raise Refused(400, f"{what}: empty")
        if "\x00" in text or len(text) > 4096:
            raise Refused(400, f"{what}: not a usable path")
        path = Path(text)
        real = Path(os.path.realpath(path if path.is_absolute() else self.workdir / path))
        if not self.inside(real, write=write):
            where = f"the UI's workdir {self.workdir}" if write else \
                "the UI's workdir" + (" and --allow dirs" if self.allowed else f" {self.workdir} (start `ui --allow DIR` to read more)")
            raise Refused(403, f"{what} {text}: outside {where}")
        return real

    def shown(self, path: str | os.PathLike) -> str:
        """A path as the page shows it: relative to the workdir when inside it."""
        real = Path(os.path.realpath(path))
        try:
            rel = real.relative_to(self.workdir)
        except ValueError:
            return str(real)
        return str(rel) if str(rel) != "." else "."
