"""``data convert --from auto``: what a source file looks like, told from its first records.

Every shape this module knows is named in words together with the ``--from`` that reads it. The
shapes PaddleOCR-VL samples cannot hold (video, audio, images inlined as ``data:`` URLs) carry the
reason and what to do instead, and so do the shapes that need an option or a choice (PaddleOCR
detection labels: ``--crop``; an ``image,table_csv`` manifest: table or chart).

Only the first records are read (:data:`SNIFF_RECORDS`), so detection costs the same on any size
of file; the converter still checks every record.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import iter_lines, iter_records

SNIFF_RECORDS = 20


@dataclass(frozen=True)
class Shape:
    """What a file looks like: ``name`` in words, ``fmt`` the ``--from`` that reads it (None: none
    does), ``refusal`` why it is not converted as it is and what to do, ``needs`` the option that
    lifts the refusal (``--crop`` for detection labels)."""

    name: str
    fmt: str | None = None
    refusal: str | None = None
    needs: str | None = None


# --- what PaddleOCR-VL samples cannot hold -----------------------------------------------------

MEDIA = {
    "video": Shape("video samples", refusal=(
        "PaddleOCR-VL reads images only (ERNIEKit's OCR-VL samples have no video input); extract the "
        "frames to read as image files and label each one")),
    "audio": Shape("audio samples", refusal=(
        "PaddleOCR-VL has no audio input, so these samples have no place in its training data; leave them out")),
    "data-url": Shape("images inlined as data: URLs", refusal=(
        "ERNIEKit reads image files (a data: URL would be decoded as raw base64 and fail); write each image "
        "to a file and put its path in place of the URL")),
}
_MEDIA_KEYS = {"video": "video", "videos": "video", "audio": "audio", "audios": "audio"}
# part types of OpenAI-style, ms-swift and LLaMA-Factory v1 messages
_MEDIA_PARTS = {"video": "video", "video_url": "video", "audio": "audio", "audio_url": "audio", "input_audio": "audio"}
_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+[;,]")
_BOX_LIST = re.compile(r"\s*\[\s*\{")


# where a record names an image (a data: URL elsewhere, say in an answer, is text)
_IMAGE_KEYS = frozenset({"image", "images", "image_url", "url", "path", "filename", "file_name", "image_info"})


def media_of(value: Any, *, image: bool = False, _depth: int = 0) -> str | None:
    """``"video"``, ``"audio"`` or ``"data-url"`` when a record carries what an OCR-VL sample
    cannot hold (a key of :data:`MEDIA`), else None. Walks the whole record, whatever its layout."""
    if _depth > 20:
        return None
    if isinstance(value, str):
        return "data-url" if image and _DATA_URL.match(value) else None
    if isinstance(value, list):
        return next((kind for item in value if (kind := media_of(item, image=image, _depth=_depth + 1))), None)
    if not isinstance(value, dict):
        return None
    for key, kind in _MEDIA_KEYS.items():
        if value.get(key):
            return kind
    part = value.get("type") if isinstance(value.get("type"), str) else None
    if part in _MEDIA_PARTS:
        return _MEDIA_PARTS[part]
    for key, item in value.items():
        named_image = image or key in _IMAGE_KEYS or (key == "value" and part in ("image", "image_url"))
        if kind := media_of(item, image=named_image, _depth=_depth + 1):
            return kind
    return None


# --- two-column manifests: an image and one text ------------------------------------------------

IMAGE_COLUMNS = ("image", "file_name", "filename", "image_path", "img_path", "image_name", "img", "path")
# a text column's name → the task it holds (--task overrides)
TEXT_COLUMNS = {
    "text": "ocr", "label": "ocr", "transcription": "ocr", "ocr": "ocr", "ground_truth": "ocr", "gt": "ocr",
    "formula": "formula", "latex": "formula", "tex": "formula",
    "html": "table", "otsl": "table", "table": "table",
    "chart": "chart",
}


def image_text_columns(header: list[str], columns: tuple[str, str] | None = None,
                       task: str | None = None) -> tuple[str, str, str]:
    """(image column, text column, task) of an image + text manifest; UsageError naming what is
    missing when the header does not say (``--columns IMAGE,TEXT``, ``--task``)."""
    shown = ",".join(header)
    if columns:
        # matched whatever the case: a CSV header is read lower-cased, a JSON object's keys as written
        found = {name.lower(): name for name in header}
        for name in columns:
            if name.lower() not in found:
                raise UsageError(f"--columns: no column {name!r} in the header ({shown})")
        image, text = (found[name.lower()] for name in columns)
    else:
        image = next((name for name in IMAGE_COLUMNS if name in header), None)
        if image is None:
            raise UsageError(f"no image column in the header ({shown}); name it with --columns IMAGE,TEXT")
        others = [name for name in header if name != image]
        named = [name for name in others if name in TEXT_COLUMNS]
        if len(others) == 1:
            text = others[0]
        elif len(named) == 1:
            text = named[0]
        else:
            raise UsageError(f"which column holds the text? the header is {shown}; name it with --columns {image},TEXT")
    task = task or TEXT_COLUMNS.get(text.lower())
    if task is None:
        raise UsageError(f"column {text!r} does not say which task it holds: pass --task (ocr, formula, table, chart, ...)")
    return image, text, task


def header_of(path: Path) -> list[str]:
    """A CSV's header (names trimmed, lower case) or the keys of a JSON file's first object."""
    if path.suffix.lower() == ".csv":
        return _csv_header(path)
    for record in islice(iter_records(path), SNIFF_RECORDS):
        if isinstance(record.value, dict):
            return list(record.value)
    raise UserError(f"{path}: no JSON object in its first {SNIFF_RECORDS} records to read the field names from")


def _csv_header(path: Path) -> list[str]:
    lines = (text for _, text, error in iter_lines(path) if error is None)
    try:
        row = next(csv.reader(lines), None)
    except csv.Error as exc:
        raise UserError(f"{path}: unreadable CSV header ({exc})") from None
    if not row:
        raise UserError(f"{path}: empty CSV (no header row)")
    return [name.strip().lower() for name in row]


# --- the shapes --------------------------------------------------------------------------------

_TABLE_CSV = Shape("an image,table_csv manifest", refusal=(
    "its CSVs may be tables (Table Recognition: OTSL targets) or chart data (Chart Recognition:): "
    "pass --from csv-table or --from chart"))


def columns_shape(keys: list[str], what: str) -> Shape | None:
    """The shape of a manifest from its field names (a CSV header or a JSON object's keys)."""
    names = set(keys)
    image = next((name for name in ("image", "filename") if name in names), None)
    if {"image", "prompt", "answer"} <= names:
        return Shape(f"{what} of image, prompt, answer", "csv")
    if image and "html" in names:
        return Shape(f"{what} of HTML tables ({image}, html; PubTabNet)", "html-table")
    if image and "latex" in names:
        return Shape(f"{what} of LaTeX formulas ({image}, latex)", "formula")
    if image and "table_csv" in names:
        return _TABLE_CSV
    try:
        image_col, text_col, task = image_text_columns(keys)
    except UsageError:
        return None
    style = ("Hugging Face metadata" if image_col == "file_name" else
             "im2latex-style" if task == "formula" else "image + text")
    return Shape(f"{what} with an image column and a text column ({style}: {image_col} → image, "
                 f"{text_col} → {task} target)", "image-text")


def record_shape(value: Any) -> Shape | None:
    """The shape of one JSON record, or None when it is none this module knows."""
    if not isinstance(value, dict):
        return None
    if media := media_of(value):
        return MEDIA[media]
    keys = set(value)
    if {"image_info", "text_info"} <= keys:
        return Shape("ERNIEKit OCR-VL samples (image_info, text_info)", "erniekit")
    if "query" in keys and "response" in keys:
        return Shape("GOT-OCR2.0 README / ms-swift records (query, response, history, images)", "got")
    if isinstance(value.get("messages"), list):
        if _has_value_parts(value["messages"]):
            return Shape("LLaMA-Factory v1 messages (content parts {type, value})", "messages")
        return Shape("OpenAI-style messages (role, content; images inline or in images)", "messages")
    if isinstance(value.get("conversations"), list):
        if "image" in keys or "images" not in keys:
            return Shape("LLaVA / MiniCPM-V / GOT-OCR2.0 conversations (image, conversations)", "llava")
        return Shape("ShareGPT conversations with an images list", "messages")
    return columns_shape(list(value), "JSON records")


def _has_value_parts(messages: list) -> bool:
    return any(isinstance(msg, dict) and isinstance(msg.get("content"), list)
               and any(isinstance(part, dict) and "value" in part for part in msg["content"]) for msg in messages)


def label_shape(line: str) -> Shape | None:
    """The shape of a PaddleOCR label line ``image<TAB>label``, or None without a TAB."""
    image, tab, label = line.rstrip("\r\n").partition("\t")
    if not tab:
        return None
    if det_boxes(label) is not None:
        return Shape("PaddleOCR detection labels (image<TAB>[{transcription, points}])", "paddleocr-det", refusal=(
            "these are text boxes on whole images, not recognition targets; cut each box into a recognition "
            "sample with --from paddleocr-det --crop (boxes transcribed '###' are skipped)"), needs="--crop")
    return Shape("PaddleOCR recognition labels (image<TAB>text)", "paddleocr-rec")


def det_boxes(label: str) -> list | None:
    """The box list of a detection label (``[{"transcription": ..., "points": ...}, ...]``), else None."""
    if not _BOX_LIST.match(label):
        return None
    try:
        boxes = json.loads(label)
    except ValueError:
        return None
    if isinstance(boxes, list) and boxes and all(isinstance(b, dict) and "points" in b for b in boxes):
        return boxes
    return None


def detect(path: str | Path) -> Shape:
    """The shape of ``path`` from its first records; UserError when it cannot be told."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        header = _csv_header(path)
        shape = columns_shape(header, "CSV")
        if shape is None:
            raise UserError(f"{path}: cannot tell the format from the CSV header ({','.join(header)}); pass --from "
                            "(and for an image + text CSV, --columns IMAGE,TEXT and --task)")
        return shape
    first = next((text for _, text, error in iter_lines(path) if error is None), None)
    if first is None:
        raise UserError(f"{path}: empty (or no line of UTF-8 text): nothing to convert")
    head = first.lstrip()
    if path.suffix.lower() in (".json", ".jsonl") or head.startswith("{") or (head.startswith("[") and "\t" not in first):
        return _json_shape(path)
    shape = label_shape(first)
    if shape is None:
        raise UserError(f"{path}: cannot tell the format: its first line is neither JSON nor image<TAB>label "
                        f"({first.strip()[:60]!r}); pass --from")
    return shape


def _json_shape(path: Path) -> Shape:
    errors: list[str] = []
    for record in islice(iter_records(path), SNIFF_RECORDS):
        if record.error:
            errors.append(f"{record.where}: {record.error}")
            continue
        shape = record_shape(record.value)
        if shape is None:
            found = f"keys {', '.join(map(str, record.value))}" if isinstance(record.value, dict) else type(record.value).__name__
            raise UserError(f"{path}: cannot tell the format: the record at line {record.line} has {found}, "
                            "a shape no converter reads; pass --from")
        return shape
    why = f" ({errors[0]})" if errors else ""
    raise UserError(f"{path}: cannot tell the format: no readable JSON record in its first {SNIFF_RECORDS}{why}; "
                    "pass --from to convert the readable ones")
