"""``data kie``: key-information-extraction samples from per-image JSON annotations (seed 001).

Input records are ``{"image": "path.jpg", "data": {...nested fields...}}``, one per image (a
``.jsonl``/``.json`` file, or a directory of ``*.json`` files). For each image this writes:

- ``OCR:{}`` → the whole ``data`` object ("extract everything"), and
- N seeded random field subsets, each field asked in the shape of its value (seed 001 "prompts"):
  ``OCR:{"F": ""}`` for a string (or any scalar), ``OCR:{"F": {}}`` for an object,
  ``OCR:{"F": []}`` for a list; the target is the matching sub-object ``{"F": data["F"], ...}``.

Prompts and targets are rendered by :func:`paddle_ocrvl_sft.prompts.render_json`, the same
function ``predict`` uses, so training and inference match byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from paddle_ocrvl_sft.data.sample import make_sample, relocate_image
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import DiscardOutput, Record, atomic_open, iter_records, refuse_inputs_as_outputs, write_json_line
from paddle_ocrvl_sft.prompts import kie_prompt, render_json


def field_shape(value: Any) -> Any:
    """The empty value of the same shape: "" for scalars, {} for objects, [] for lists."""
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return []
    return ""


def kie_turns(data: dict, *, subsets: int, max_fields: int, rng: random.Random, full: bool = True) -> list[tuple[str, str]]:
    """(prompt, target) pairs for one image's annotation; subsets are distinct and seeded."""
    turns = [(kie_prompt({}), render_json(data))] if full else []
    keys = list(data)
    if not keys:
        return turns
    seen = set()
    # the number of distinct subsets of 1..max_fields keys bounds how many we can draw
    possible = sum(math.comb(len(keys), k) for k in range(1, min(max_fields, len(keys)) + 1))
    for _ in range(min(subsets, possible)):
        for _attempt in range(20):
            k = rng.randint(1, min(max_fields, len(keys)))
            chosen = tuple(sorted(rng.sample(range(len(keys)), k)))
            if chosen not in seen:
                break
        else:
            break
        seen.add(chosen)
        names = [keys[i] for i in chosen]
        query = {name: field_shape(data[name]) for name in names}
        target = {name: data[name] for name in names}
        turns.append((kie_prompt(query), render_json(target)))
    return turns


def iter_annotations(source: str | os.PathLike) -> Iterator[Record]:
    """Records of a .jsonl/.json annotation file, or of every ``*.json`` file of a directory.

    In a directory each file holds one (usually pretty-printed) annotation object, or an array
    of them.
    """
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*.json")):
            yield from _annotation_file(path)
        return
    if not source.is_file():
        raise UsageError(f"{source}: no such file or directory")
    yield from iter_records(source)


def _annotation_file(path: Path) -> Iterator[Record]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        yield Record(path, 1, error=f"unreadable ({exc})")
        return
    if text.lstrip().startswith("["):
        yield from iter_records(path)
        return
    try:
        yield Record(path, 1, json.loads(text))
    except json.JSONDecodeError as exc:
        yield Record(path, exc.lineno, error=f"invalid JSON: {exc.msg} (column {exc.colno})")


@dataclass
class KieReport:
    images: int = 0
    samples: int = 0
    rejected: int = 0
    written: bool = False  # False: rejects without skip_bad, or nothing to write; OUT untouched



def _annotation_error(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "the annotation must be an object with 'image' and 'data'"
    if not isinstance(value.get("image"), str) or not value["image"]:
        return "image: required, a non-empty string (the image path)"
    if not isinstance(value.get("data"), dict):
        return "data: required, a JSON object of the fields"
    return None


def build_kie_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    per_image: int = 10,
    max_fields: int = 3,
    seed: int = 0,
    full: bool = True,
    image_root: str | os.PathLike | None = None,
    skip_bad: bool = False,
    force: bool = False,
    on_error: Callable[[str], None] | None = None,
) -> KieReport:
    """Write an ERNIEKit JSONL of KIE samples; bad annotations are reported (``FILE:LINE: ...``).

    OUT is written (atomically) only when every annotation was usable, or with ``skip_bad`` when
    at least one sample came out; otherwise it is left as it was and ``written`` is False.
    """
    if per_image < 0 or max_fields < 1:
        raise UserError(f"--per-image must be >= 0 and --max-fields >= 1, got {per_image} and {max_fields}")
    if not full and per_image == 0:
        raise UserError("--no-full with --per-image 0 would write no sample")
    out = Path(out)
    if Path(source).is_file():
        refuse_inputs_as_outputs([source], [out])
    report = KieReport()
    with atomic_open(out, force=force) as fh:
        for record in iter_annotations(source):
            problem = record.error or _annotation_error(record.value)
            if problem:
                report.rejected += 1
                if on_error:
                    on_error(f"{record.where}: error: {problem}")
                continue
            image = record.value["image"]
            url = relocate_image(image, record.path, out, image_root)
            # seeding per image keeps each image's subsets stable when others are added or removed
            digest = hashlib.sha256(f"{seed}\0{image}".encode()).digest()
            rng = random.Random(int.from_bytes(digest[:8], "little"))
            for prompt, target in kie_turns(record.value["data"], subsets=per_image, max_fields=max_fields, rng=rng, full=full):
                write_json_line(fh, make_sample([url], [(prompt, target)]))
                report.samples += 1
            report.images += 1
        if (report.rejected and not skip_bad) or not report.samples:
            raise DiscardOutput
        report.written = True
    return report
