"""``data convert``: other dataset formats → ERNIEKit OCR-VL JSONL, and ERNIEKit → ``messages``.

Layout after LLaMA-Factory's ``data/converter.py``: a small :class:`Converter` base class, one
subclass per source format, and the :data:`CONVERTERS` registry. Every converter reads its file
as a stream of located records and turns each into an :class:`Example` (images + (prompt, answer)
turns); a writer renders the example as an ERNIEKit sample (seed 000 §3.2) or as a ``messages``
record. A record that cannot be converted raises :class:`Reject` naming the field and why; the
driver reports it as ``FILE:LINE: error: FIELD: WHY`` and goes on, so nothing is dropped silently.
What converts with a caveat (an ``<image>`` moved, a second TAB kept) is a warning of a named rule,
summarised per rule (:mod:`paddle_ocrvl_sft.data.warning_summary`). ``--from auto`` (the default)
reads the first records to tell the format (:mod:`paddle_ocrvl_sft.data.detect`) and refuses, once,
files of a shape PaddleOCR-VL samples cannot hold.

Image paths: relative paths in the source resolve against the source file's directory (or
``image_root``) and are rewritten relative to the output's directory, which is where ERNIEKit
resolves them (its reader joins a relative image path to the dataset file's directory). URLs,
absolute paths and base64 payloads pass through.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from paddle_ocrvl_sft.data import detect, otsl
from paddle_ocrvl_sft.data.sample import MASK, NO_MASK, image_urls, is_remote, make_sample, relocate_image, sample_turns
from paddle_ocrvl_sft.data.warning_summary import WarningSummary
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import (
    Record, atomic_open, iter_lines, iter_records, open_named_file, refuse_inputs_as_outputs, shown, staged_dir,
    write_json_line,
)
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS

# `<image>` (LLaVA, GOT-OCR2.0, ShareGPT, ms-swift) and `<image_00>` (MiniCPM-V multi-image).
_IMAGE_TAG = re.compile(r"<image(?:_\d+)?>")
_USER_ROLES, _ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")

# The warnings convert gives (each converts the record), and how to fix the cause of each.
WARNING_RULES = {
    "image-moved": "put each <image> (or image part) in the first user turn of the source",
    "second-tab": "replace the TAB inside the text (PaddleOCR cuts the label there)",
}


class Reject(Exception):
    """A record that cannot be converted: which field, and why."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


@dataclass
class Example:
    """What one source record says: its images (as written in the source) and its turns."""

    images: list[str]
    turns: list[tuple[str, str]]
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (rule, message): converted, with a caveat
    placed: bool = False  # images already written relative to OUT (crops), not to the source


@dataclass(frozen=True)
class Crops:
    """Where ``--crop`` writes the cut boxes: ``staging`` while converting, ``final`` once done."""

    staging: Path
    final: Path
    out: Path

    def url(self, name: str) -> str:
        """How OUT names the crop ``name`` (relative to OUT's directory, where ERNIEKit resolves it)."""
        return os.path.relpath(os.path.join(os.path.abspath(self.final), name), os.path.dirname(os.path.abspath(self.out)))


@dataclass(frozen=True)
class Source:
    """The file being converted and the options that shape its records."""

    path: Path
    image_root: Path | None = None
    default_prompt: str | None = None  # used for an empty prompt; None: reject the record
    task: str | None = None  # --task: the built-in task of label / image-text targets
    columns: tuple[str, str] | None = None  # --columns IMAGE,TEXT of an image-text manifest
    crops: Crops | None = None  # --crop

    def image_path(self, url: str) -> str:
        """Where a local image named in the source is: against --image-root, else the source's dir."""
        return os.path.join(os.path.abspath(self.image_root or self.path.parent), url)


def builtin_or_text(prompt: str) -> str:
    """``table`` → ``Table Recognition:`` (a built-in kind name, any case); other text unchanged."""
    return BUILTIN_PROMPTS.get(prompt.strip().lower(), prompt)


# --- the converters ----------------------------------------------------------------------------


class Converter:
    """Reads one source format. Subclasses set ``name``/``summary``/``reader`` and ``convert``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reader: ClassVar[str] = "json"  # json: .json/.jsonl records; csv; lines; manifest: csv or json by suffix
    reads_also: ClassVar[tuple[str, ...]] = ()  # the formats whose files this one reads as well

    def records(self, path: Path) -> Iterator[Record]:
        kind = self.reader
        if kind == "manifest":
            kind = "csv" if path.suffix.lower() == ".csv" else "json"
        return {"json": iter_records, "csv": iter_csv_rows, "lines": iter_label_lines}[kind](path)

    def prepare(self, src: Source) -> None:
        """Once, before the records: read what the whole file shares (a header's columns)."""

    def convert(self, value: Any, src: Source) -> Example:
        raise NotImplementedError

    def convert_record(self, record: Record, src: Source) -> list[Example]:
        """The samples of one record: one, unless the format holds several per record."""
        return [self.convert(record.value, src)]

    def notes(self) -> list[str]:
        """After the records: what the run did that is no error or warning (boxes skipped)."""
        return []

    # helpers shared by the subclasses
    @staticmethod
    def get(value: Any, key: str, *keys: str) -> Any:
        """The value of the first of ``key, *keys`` present in the record (Reject if none)."""
        if not isinstance(value, dict):
            raise Reject("record", f"expected a JSON object, got {type(value).__name__}")
        for name in (key, *keys):
            if name in value:
                return value[name]
        raise Reject(key, "missing" + (f" (also looked for {', '.join(keys)})" if keys else ""))

    @classmethod
    def text(cls, value: Any, key: str, *keys: str) -> str:
        found = cls.get(value, key, *keys)
        if not isinstance(found, str) or not found.strip():
            raise Reject(key, "expected a non-empty string" + (f", got {found!r}" if not isinstance(found, str) else ""))
        return found

    @staticmethod
    def prompt(text: str, where: str, src: Source) -> str:
        """A prompt with the image placeholders removed; empty → ``--default-prompt`` or Reject."""
        cleaned = _IMAGE_TAG.sub("", text).strip()
        if cleaned:
            return cleaned
        if src.default_prompt is None:
            raise Reject(where, "empty prompt once the <image> placeholder is removed (pass --default-prompt ocr to use 'OCR:')")
        return src.default_prompt

    @staticmethod
    def answer(text: Any, where: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise Reject(where, f"expected a non-empty answer, got {text!r}")
        return text


CONVERTERS: dict[str, type[Converter]] = {}


def register(*names: str) -> Callable[[type[Converter]], type[Converter]]:
    def add(cls: type[Converter]) -> type[Converter]:
        for name in names:
            CONVERTERS[name] = cls
        return cls

    return add


def get_converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise UsageError(f"--from {name}: unknown format (choose from {', '.join(CONVERTERS)})")
    return CONVERTERS[name]()


def _image_list(found: Any, key: str) -> list[str]:
    """``"a.png"``, ``["a.png", ...]`` or MiniCPM-V's ``{"<image_00>": "a.png", ...}`` (in order)."""
    items = list(found.values()) if isinstance(found, dict) else [found] if isinstance(found, str) else found
    if not isinstance(items, list) or not items:
        raise Reject(key, f"expected an image path, a list or a dict of them, got {found!r}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise Reject(f"{key}[{i}]" if not isinstance(found, str) else key, f"expected an image path, got {item!r}")
    return items


def _part_text(part: dict) -> str | None:
    """The text of a text part: OpenAI ``{"type": "text", "text"}``, LLaMA-Factory v1 ``{..., "value"}``."""
    return next((part[k] for k in ("text", "value") if isinstance(part.get(k), str)), None)


def _part_image(part: dict, where: str) -> str | None:
    """The image of an image part (None: not one): ``{"type": "image", "image"|"url"|"path"}``,
    ``{"type": "image_url", "image_url": {"url"}}`` (OpenAI) or ``{"type": "image_url", "value"}``
    (LLaMA-Factory v1)."""
    kind = part.get("type")
    if kind == "image":
        return next((part[k] for k in ("image", "url", "path", "value") if isinstance(part.get(k), str)), None)
    if kind != "image_url":
        return None
    url = part.get("image_url", part.get("value"))
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str):
        raise Reject(f"{where}.image_url", "expected {'url': PATH}, or a path in 'value'")
    return url


def _content(content: Any, where: str, images: list[str]) -> str:
    """A turn's text; lists of parts (OpenAI, LLaMA-Factory v1) add their images to ``images``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Reject(where, f"expected a string or a list of parts, got {type(content).__name__}")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and (text := _part_text(part)) is not None:
            texts.append(text)
        elif kind in ("image", "image_url") and (image := _part_image(part, f"{where}[{i}]")) is not None:
            images.append(image)
        elif kind in ("reasoning", "tool_call"):
            raise Reject(f"{where}[{i}]", f"a {kind} part: PaddleOCR-VL samples hold a prompt and its answer only")
        else:
            raise Reject(f"{where}[{i}]", f"expected a text, image or image_url part, got {part!r:.80}")
    return "\n".join(texts)


def moved_image(where: str) -> tuple[str, str]:
    """The warning for an image placeholder or part after the first user turn."""
    return ("image-moved", f"{where}: an image in a later user turn; it is put before the first prompt, "
            "where every image of a PaddleOCR-VL sample goes (ERNIEKit's matched_text_index 0)")


@dataclass
class Turns:
    """The (prompt, answer) turns of a conversation and what its user turns said about images."""

    turns: list[tuple[str, str]]
    n_tags: int  # image placeholders in the user turns
    warnings: list[tuple[str, str]]


def chat_turns(messages: Any, key: str, src: Source, images: list[str]) -> Turns:
    """Alternating user/assistant turns (``role``/``content`` or ShareGPT ``from``/``value``);
    inline image parts are added to ``images``. An image placeholder or part in a user turn after
    the first is moved before the first prompt, with a warning."""
    if not isinstance(messages, list) or not messages:
        raise Reject(key, "expected a non-empty list of turns")
    turns: list[tuple[str, str]] = []
    n_tags, warnings = 0, []
    for i, msg in enumerate(messages):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise Reject(where, f"expected an object, got {type(msg).__name__}")
        role_key = "role" if "role" in msg else "from"
        role = str(msg.get(role_key, "")).lower()
        want = _USER_ROLES if i % 2 == 0 else _ASSISTANT_ROLES
        if role not in want:
            why = "system turns have no place in an ERNIEKit sample" if role == "system" else (
                f"expected {' or '.join(want)} here (turns alternate user, assistant), got {msg.get(role_key)!r}")
            raise Reject(f"{where}.{role_key}", why)
        text_key = "content" if "content" in msg else "value"
        before = len(images)
        text = _content(msg.get(text_key), f"{where}.{text_key}", images)
        if i % 2 == 0:
            tags = len(_IMAGE_TAG.findall(text))
            n_tags += tags
            if i and (tags or len(images) > before):
                warnings.append(moved_image(f"{where}.{text_key}"))
            turns.append((Converter.prompt(text, f"{where}.{text_key}", src), ""))
        else:
            if len(images) > before:
                raise Reject(f"{where}.{text_key}", "an image in an assistant turn")
            weight = msg.get("loss_weight", 1)
            if weight != 1:  # LLaMA-Factory v1: an answer that is context, not a target
                raise Reject(f"{where}.loss_weight", f"{weight!r}: ERNIEKit trains on every answer with weight 1")
            turns[-1] = (turns[-1][0], Converter.answer(text, f"{where}.{text_key}"))
    if len(messages) % 2:
        raise Reject(key, "the last turn is a user turn with no assistant answer")
    return Turns(turns, n_tags, warnings)


def check_placeholders(n_tags: int, images: list[str], key: str) -> None:
    """Placeholders are optional (the image goes before the first prompt either way), but when
    present there must be one per image, as LLaVA, MiniCPM-V and ms-swift require."""
    if n_tags and n_tags != len(images):
        raise Reject(key, f"{n_tags} image placeholder(s) for {len(images)} image(s)")


@register("llava")
class ConversationsConverter(Converter):
    """MiniCPM-V / LLaVA (seed 003) and GOT-OCR2.0's training data (seed 004), LLaVA's layout:
    ``{"image": ..., "conversations": [{"role"|"from": ..., "content"|"value": "<image>\\n..."}, ...]}``."""

    name, summary = "llava", "MiniCPM-V / LLaVA / GOT-OCR2.0 conversations"

    def convert(self, value, src):
        images = _image_list(self.get(value, "image", "images"), "image")
        chat = chat_turns(self.get(value, "conversations"), "conversations", src, [])
        check_placeholders(chat.n_tags, images, "conversations")
        return Example(images, chat.turns, chat.warnings)


def _history(history: Any) -> list[tuple[Any, Any]]:
    """ms-swift's ``history``: ``[[query, response], ...]``, the turns before the record's query."""
    if not isinstance(history, list):
        raise Reject("history", f"expected a list of [query, response] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise Reject(f"history[{i}]", f"expected a [query, response] pair, got {pair!r:.80}")
    return [tuple(pair) for pair in history]


def query_response_example(value: Any, src: Source) -> Example:
    """GOT-OCR2.0's README fine-tune records, which are ms-swift's custom format:
    ``{"query": "<image>...", "response": ..., "history": [[q, r], ...], "images": [...]}``."""
    query, response = Converter.get(value, "query"), Converter.get(value, "response")
    if value.get("system"):
        raise Reject("system", "a system prompt has no place in an ERNIEKit sample")
    pairs = [(f"history[{i}][0]", q, f"history[{i}][1]", r) for i, (q, r) in enumerate(_history(value.get("history") or []))]
    pairs.append(("query", query, "response", response))
    if not value.get("images"):
        raise Reject("images", "missing or empty (ERNIEKit drops samples without an image)")
    images = _image_list(value["images"], "images")
    turns, n_tags, warnings = [], 0, []
    for i, (where_q, q, where_r, r) in enumerate(pairs):
        if not isinstance(q, str):
            raise Reject(where_q, f"expected a string, got {type(q).__name__}")
        tags = len(_IMAGE_TAG.findall(q))
        n_tags += tags
        if i and tags:
            warnings.append(moved_image(where_q))
        turns.append((Converter.prompt(q, where_q, src), Converter.answer(r, where_r)))
    check_placeholders(n_tags, images, "query")
    return Example(images, turns, warnings)


@register("got")
class GotConverter(Converter):
    """GOT-OCR2.0 data in either layout, told record by record: the fine-tune format its README
    gives (ms-swift's ``query``/``response``/``history``/``images``) or the LLaVA layout its own
    training code reads (``image`` + ``conversations``)."""

    name, summary = "got", "GOT-OCR2.0 query/response (its README) or conversations"
    reads_also = ("llava",)

    def convert(self, value, src):
        if isinstance(value, dict) and "query" in value:
            return query_response_example(value, src)
        if isinstance(value, dict) and "conversations" in value:
            return ConversationsConverter().convert(value, src)
        self.get(value, "query", "conversations")  # not a dict, or neither key: rejects naming both
        raise AssertionError("unreachable: get() found a key handled above")


@register("messages")
class MessagesConverter(Converter):
    """OpenAI-style ``{"messages": [...], "images": [...]}`` (content a string or a list of
    text/image/image_url parts), LLaMA-Factory v1 messages (parts ``{"type": "text"|"image_url",
    "value": ...}``) and ShareGPT ``{"conversations": [{"from", "value"}], "images"}``."""

    name, summary = "messages", "OpenAI / ShareGPT / ms-swift / LLaMA-Factory v1 messages"

    def convert(self, value, src):
        self.get(value, "messages", "conversations")  # rejects naming both when neither is there
        key = "messages" if "messages" in value else "conversations"
        inline: list[str] = []
        chat = chat_turns(value[key], key, src, inline)
        listed = _image_list(value["images"], "images") if value.get("images") else []
        if inline and listed:
            raise Reject("images", "images given both inline in the messages and in 'images'")
        if not inline and not listed:
            raise Reject(key, "no image (ERNIEKit drops samples without one)")
        if listed:
            check_placeholders(chat.n_tags, listed, key)
        return Example(inline or listed, chat.turns, chat.warnings)


def task_target(task: str, text: str, where: str) -> str:
    """A text as the target of ``task``: a formula wrapped as ``\\[...\\]``, an HTML table as OTSL,
    anything else as it is."""
    try:
        if task == "formula":
            return otsl.formula_target(text)
        if task == "table" and "<table" in text.lower():
            return otsl.html_to_otsl(text)
    except ValueError as exc:
        raise Reject(where, str(exc)) from None
    if task == "table" and "<nl>" not in text:
        raise Reject(where, "expected an HTML table or OTSL (rows ending in <nl>)")
    return text


@register("paddleocr-rec")
class PaddleOCRRecConverter(Converter):
    """PaddleOCR recognition labels: ``image_path<TAB>text`` per line → prompt ``OCR:`` (``--task``
    another built-in task, e.g. ``formula`` for PaddleOCR's LaTeX-OCR labels)."""

    name, summary, reader = "paddleocr-rec", "PaddleOCR recognition label file", "lines"

    def convert(self, value, src):
        image, tab, text = value.partition("\t")
        if not tab:
            raise Reject("line", "expected image_path<TAB>text")
        if not image.strip():
            raise Reject("image_path", "empty")
        if image.startswith("["):  # PaddleOCR picks one of a JSON list of files at random per epoch
            raise Reject("image_path", "a list of files; write one image_path<TAB>text line per file")
        if detect.det_boxes(text) is not None:
            raise Reject("text", "a list of text boxes (a PaddleOCR detection label), not a text to read; "
                         "use --from paddleocr-det --crop")
        task = src.task or "ocr"
        warnings = []
        if "\t" in text:  # PaddleOCR's reader splits the line at every TAB and keeps the second field
            warnings.append(("second-tab", "text: holds another TAB; kept whole here, while PaddleOCR's own "
                             f"reader would cut the label there (to {text.split(chr(9))[0][:40]!r})"))
        target = task_target(task, self.answer(text, "text"), "text")
        return Example([image.strip()], [(BUILTIN_PROMPTS[task], target)], warnings)


@register("paddleocr-det")
class PaddleOCRDetConverter(Converter):
    """PaddleOCR detection labels ``image<TAB>[{"transcription": ..., "points": [[x, y], ...]}, ...]``:
    with ``--crop`` each box is cut out of its image (:mod:`paddle_ocrvl_sft.data.crop`) into a
    recognition sample ``OCR:`` → its transcription; boxes transcribed ``###`` (PaddleOCR's
    do-not-care mark) are skipped and counted."""

    name, summary, reader = "paddleocr-det", "PaddleOCR detection labels, each box cut out (--crop)", "lines"

    def __init__(self):
        self.skipped = 0

    def convert_record(self, record, src):
        from paddle_ocrvl_sft.data import crop

        image, tab, label = record.value.partition("\t")
        if not tab:
            raise Reject("line", "expected image_path<TAB>[boxes]")
        image = image.strip()
        if not image:
            raise Reject("image_path", "empty")
        boxes = detect.det_boxes(label)
        if boxes is None:
            raise Reject("boxes", 'expected a JSON list of {"transcription": ..., "points": [[x, y], ...]}')
        kept = []
        for k, box in enumerate(boxes):
            text = box.get("transcription")
            if not isinstance(text, str):
                raise Reject(f"boxes[{k}].transcription", f"expected a string, got {text!r:.40}")
            if text == "###":
                self.skipped += 1
                continue
            try:
                kept.append((k, self.answer(text, f"boxes[{k}].transcription"), crop.box_points(box["points"])))
            except ValueError as exc:
                raise Reject(f"boxes[{k}].points", str(exc)) from None
        if not kept:
            return []
        if is_remote(image) or image.startswith("data:"):
            raise Reject("image_path", "not a local file: --crop cuts boxes out of image files")
        path = src.image_path(image)
        try:
            page = crop.load_image(path)
        except OSError as exc:
            raise Reject("image_path", f"{shown(path)}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise Reject("image_path", f"{shown(path)}: {exc}") from None
        pieces = []
        for k, text, points in kept:
            try:
                pieces.append((f"{record.line}_{k}.png", text, crop.cut_box(page, points)))
            except ValueError as exc:
                raise Reject(f"boxes[{k}].points", str(exc)) from None
        examples = []
        for name, text, piece in pieces:
            try:
                piece.save(src.crops.staging / name, format="PNG")
            except OSError as exc:  # the disk, not the record: the run stops, nothing is kept
                raise UserError(f"{src.crops.final}: cannot write the crops ({exc.strerror or exc})") from None
            examples.append(Example([src.crops.url(name)], [(BUILTIN_PROMPTS["ocr"], text)], placed=True))
        return examples

    def notes(self):
        return [f"skipped {self.skipped} box(es) transcribed '###' (PaddleOCR's do-not-care mark)"] if self.skipped else []


@register("csv")
class CsvConverter(Converter):
    """CSV with header ``image,prompt,answer`` (or JSON records with those fields); ``prompt`` may
    be a built-in kind (``table``)."""

    name, summary, reader = "csv", "CSV image,prompt,answer", "manifest"

    def convert(self, value, src):
        prompt = self.prompt(builtin_or_text(self.get(value, "prompt")), "prompt", src)
        return Example([self.text(value, "image")], [(prompt, self.answer(self.get(value, "answer"), "answer"))])


def _structured(converter: Converter, value: Any, kind: str, target: Callable[[], str], where: str) -> Example:
    """One image, the built-in prompt of ``kind``, and a target whose ValueError rejects ``where``."""
    image = converter.text(value, "image", "filename")
    try:
        return Example([image], [(BUILTIN_PROMPTS[kind], target())])
    except ValueError as exc:
        raise Reject(where, str(exc)) from None


def _token_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(token, str) for token in value):
        raise Reject(where, f"expected a list of token strings, got {value!r:.80}")
    return value


def _pubtabnet_html(obj: dict) -> str:
    """PubTabNet / PaddleOCR table labels: structure tokens with each cell's tokens poured in
    after ``<td>`` (or after the ``>`` closing ``<td`` + attributes)."""
    structure, cells = obj.get("structure"), obj.get("cells")
    if not isinstance(structure, dict) or not isinstance(cells, list):
        raise Reject("html", "expected an HTML string or {'structure': {'tokens': [...]}, 'cells': [...]}")
    tokens = _token_list(structure.get("tokens"), "html.structure.tokens")
    cells = [_token_list(cell.get("tokens") if isinstance(cell, dict) else cell, f"html.cells[{i}].tokens")
             for i, cell in enumerate(cells)]
    out, k = ["<table>"], 0
    for token in tokens:
        out.append(token)
        if token in ("<td>", ">"):
            if k == len(cells):
                raise Reject("html.cells", f"{len(cells)} cells for more <td> in the structure")
            out.append("".join(cells[k]))
            k += 1
    if k != len(cells):
        raise Reject("html.cells", f"{len(cells)} cells for {k} <td> in the structure")
    return "".join(out + ["</table>"])


@register("html-table")
class HtmlTableConverter(Converter):
    """``{image, html}`` records (JSONL/JSON, or CSV columns) → ``Table Recognition:`` + OTSL.
    ``filename`` is accepted for ``image`` and a PubTabNet ``html`` object for the HTML string."""

    name, summary, reader = "html-table", "HTML tables → OTSL", "manifest"

    def convert(self, value, src):
        markup = self.get(value, "html")
        markup = _pubtabnet_html(markup) if isinstance(markup, dict) else markup
        if not isinstance(markup, str):
            raise Reject("html", f"expected an HTML string, got {type(markup).__name__}")
        return _structured(self, value, "table", lambda: otsl.html_to_otsl(markup), "html")


def read_table_csv(value: dict, src: Source) -> list[list[str]]:
    """The rows of the CSV file named by ``table_csv`` (relative to the manifest's directory)."""
    name = Converter.text(value, "table_csv")
    path = src.path.parent / name
    try:
        with open_named_file(path, "r", encoding="utf-8-sig", newline="") as fh:
            return [row for row in csv.reader(fh) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise Reject("table_csv", f"{shown(path)}: {getattr(exc, 'strerror', None) or exc}") from None


@register("csv-table")
class CsvTableConverter(Converter):
    """Manifest ``image,table_csv`` → ``Table Recognition:`` + OTSL of that CSV (no spans)."""

    name, summary, reader = "csv-table", "CSV tables → OTSL", "manifest"

    def convert(self, value, src):
        return _structured(self, value, "table", lambda: otsl.rows_to_otsl(read_table_csv(value, src)), "table_csv")


@register("formula")
class FormulaConverter(Converter):
    """Manifest ``image,latex`` → ``Formula Recognition:`` + ``\\[...\\]``."""

    name, summary, reader = "formula", "LaTeX formulas", "manifest"

    def convert(self, value, src):
        latex = self.text(value, "latex")
        return _structured(self, value, "formula", lambda: otsl.formula_target(latex), "latex")


@register("chart")
class ChartConverter(Converter):
    """Manifest ``image,table_csv`` → ``Chart Recognition:`` + the guide's chart table."""

    name, summary, reader = "chart", "chart data tables", "manifest"

    def convert(self, value, src):
        return _structured(self, value, "chart", lambda: otsl.chart_target(read_table_csv(value, src)), "table_csv")


@register("image-text")
class ImageTextConverter(Converter):
    """An image column and one text column: Hugging Face image datasets' ``metadata.csv`` /
    ``metadata.jsonl`` (``file_name,text``), im2latex-style CSVs (``formula,image``). The columns
    come from the header (:func:`detect.image_text_columns`) or ``--columns IMAGE,TEXT``; the task
    from the text column's name (``text`` → ``OCR:``, ``formula`` → ``Formula Recognition:``, ...)
    or ``--task``."""

    name, summary, reader = "image-text", "image + text columns (HF metadata.csv, im2latex)", "manifest"

    def prepare(self, src):
        header = detect.header_of(src.path)
        try:
            self.image_column, self.text_column, self.task = detect.image_text_columns(header, src.columns, src.task)
        except UsageError as exc:
            raise UsageError(f"{src.path}: {exc}") from None

    def convert(self, value, src):
        image = self.text(value, self.image_column)
        answer = self.answer(self.get(value, self.text_column), self.text_column)
        return Example([image], [(BUILTIN_PROMPTS[self.task], task_target(self.task, answer, self.text_column))])


@register("erniekit")
class ErnieKitConverter(Converter):
    """ERNIEKit OCR-VL samples (seed 000 §3.2): the source of ``--to messages``, or a move."""

    name, summary = "erniekit", "ERNIEKit OCR-VL JSONL"

    def convert(self, value, src):
        text_info, image_info = self.get(value, "text_info"), self.get(value, "image_info")
        if not isinstance(text_info, list) or not text_info:
            raise Reject("text_info", "expected a non-empty list")
        for i, item in enumerate(text_info):
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise Reject(f"text_info[{i}]", "expected {'text': str, 'tag': 'mask'|'no_mask'}")
            if item.get("tag") not in (MASK, NO_MASK) or (i == 0 and item["tag"] != MASK):
                raise Reject(f"text_info[{i}].tag", "the first tag must be 'mask', the others 'mask' or 'no_mask'")
        if not isinstance(image_info, list) or not image_info:
            raise Reject("image_info", "expected a non-empty list")
        for i, item in enumerate(image_info):
            if not isinstance(item, dict) or not isinstance(item.get("image_url"), str):
                raise Reject(f"image_info[{i}]", "expected {'image_url': str, 'matched_text_index': 0}")
            if item.get("matched_text_index", 0) != 0:
                raise Reject(f"image_info[{i}].matched_text_index", "only images before the first prompt (index 0) are supported")
        turns = [(self.prompt(p, "text_info", src), self.answer(a, "text_info")) for p, a in sample_turns(value)]
        return Example(image_urls(value), turns)


# --- readers that are not JSON -----------------------------------------------------------------


def iter_label_lines(path: Path) -> Iterator[Record]:
    """Non-blank lines of a text file (line ending removed), streamed with 1-based line numbers."""
    for lineno, text, error in iter_lines(path):
        yield Record(path, lineno, None if error else text.rstrip("\r\n"), error)


class _BadLine(Exception):
    """Raised through ``csv.reader`` for a line that is not UTF-8; the reader resumes after it."""


class _CsvLines:
    """Feeds ``csv.reader`` one line at a time, each decoded on its own, and remembers the line
    where the current row started. ``csv.reader`` starts every row afresh, so after a bad line or
    a ``csv.Error`` reading goes on with the next line. Lone CRs (old Mac files) end lines too."""

    def __init__(self, path: Path):
        self.lines = iter_lines(path, skip_blank=False)
        self.line, self.row_start = 0, None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        self.line, text, error = next(self.lines)  # StopIteration ends the reader
        if self.row_start is None:
            self.row_start = self.line
        if error is not None:
            raise _BadLine(error)
        return text


def iter_csv_rows(path: Path) -> Iterator[Record]:
    """Rows of a CSV with a header as ``{column: value}`` records, streamed (quoted newlines ok).

    A bad row (not UTF-8, malformed quoting, wrong number of fields) is an error record at the
    line where it starts, and reading goes on with the next line. When the bad row had taken in
    more lines than its first (a quote opened and never properly closed), those lines may have
    been rows of their own: that error has ``unread_after`` set, and says which lines.
    """
    lines = _CsvLines(path)
    reader = csv.reader(lines, strict=True)  # strict: an unclosed quote fails instead of eating the file
    header = None
    while True:
        lines.row_start = None
        try:
            row = next(reader)
        except StopIteration:
            return
        except (_BadLine, csv.Error) as exc:
            start, end = lines.row_start or lines.line, lines.line
            why = str(exc) if isinstance(exc, _BadLine) else f"unreadable CSV: {exc}"
            if end > start:  # a quote opened on line `start` took in the lines up to `end`
                why = (f"line {end}: {why}, inside a quoted field opened on line {start}; "
                       f"{end - start} line(s) after line {start} were not read as rows")
            if header is None:
                yield Record(path, start, error=f"{why}; the header is unreadable, so nothing was read", unread_after=True)
                return
            yield Record(path, start, error=why, unread_after=end > start)
            continue
        start = lines.row_start
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [name.strip().lower() for name in row]
        elif len(row) != len(header):
            yield Record(path, start, error=f"{len(row)} fields for a {len(header)}-column header ({','.join(header)})")
        else:
            yield Record(path, start, dict(zip(header, row)))


# --- writers -----------------------------------------------------------------------------------


def to_erniekit(example: Example) -> dict:
    return make_sample(example.images, example.turns)


def to_messages(example: Example) -> dict:
    """ms-swift / LLaMA-Factory ``messages`` + ``images``; the ``<image>`` tags open the first
    user turn, where PaddleOCR-VL's chat template puts the image (before the query)."""
    messages = []
    for i, (prompt, answer) in enumerate(example.turns):
        tags = "<image>" * len(example.images) if i == 0 else ""
        messages += [{"role": "user", "content": tags + prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "images": example.images}


WRITERS: dict[str, Callable[[Example], dict]] = {"erniekit": to_erniekit, "messages": to_messages}


# --- the driver --------------------------------------------------------------------------------

_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{256,}")


def place_image(url: str, src: Source, out: Path) -> str:
    """The image reference as it must appear in ``out`` so that it resolves to the same file."""
    if is_remote(url) or os.path.isabs(url) or _BASE64.fullmatch(url):
        return url
    if url.startswith("data:"):
        raise Reject("image", "data: URLs are not read by ERNIEKit; save the image to a file")
    return relocate_image(url, src.path, out, src.image_root)


@dataclass
class Summary:
    converted: int = 0  # records converted
    rejected: int = 0
    samples: int = 0  # samples written: one per record, or one per box with --crop
    written: bool = False  # False when rejects (without skip_bad), unread input or no converted record kept OUT unwritten
    reasons: list[str] = field(default_factory=list)
    fmt: str = ""  # the --from that read the file
    shape: detect.Shape | None = None  # what the file looks like (None: not told)
    hint: str | None = None  # with rejects: the file looks like another format than --from
    warnings: WarningSummary = field(default_factory=WarningSummary)
    notes: list[str] = field(default_factory=list)


class _NotWritten(Exception):
    """Abandons OUT (and the crops) after the pass: both stay as they were."""


# options that only some formats take
_FORMATS_OF_OPTION = {"--task": ("paddleocr-rec", "image-text"), "--columns": ("image-text",), "--crop": ("paddleocr-det",)}


def _refusal(shape: detect.Shape | None, fmt: str, auto: bool, crop: bool) -> str | None:
    """Why the file is not converted as asked (None: it is). A shape no format reads is refused
    even under an explicit ``--from`` (each record would fail the same way); a choice the user made
    (``--from chart`` for an ``image,table_csv`` manifest) is not second-guessed."""
    if shape is None or shape.refusal is None:
        return None
    if shape.needs == "--crop":
        if crop and (auto or fmt == shape.fmt):
            return None
        if fmt == shape.fmt:
            return f"--from {fmt} needs --crop: {shape.refusal}"
        return shape.refusal
    if shape.fmt is None and (auto or shape in detect.MEDIA.values()):
        return shape.refusal
    return None


def convert_file(
    fmt: str,
    src_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    to: str = "erniekit",
    image_root: str | os.PathLike | None = None,
    default_prompt: str | None = None,
    task: str | None = None,
    columns: tuple[str, str] | None = None,
    crop: bool = False,
    crop_dir: str | os.PathLike | None = None,
    ignore: tuple[str, ...] = (),
    skip_bad: bool = False,
    force: bool = False,
    report: Callable[[str], None] = print,
) -> Summary:
    """Convert ``src_path`` (format ``fmt``, or ``"auto"``: told from its first records) to
    ``out_path`` in constant memory.

    Each rejected record is passed to ``report`` as ``FILE:LINE: error: FIELD: WHY``; warnings are
    collected per rule in ``Summary.warnings`` (rules in ``ignore`` only counted). OUT is written
    atomically, and only when every record converted, or with ``skip_bad`` when at least one did
    (ERNIEKit's reader drops invalid samples and reads on, so an all-invalid dataset loops forever)
    and the reader lost nothing (an error it could not read past, e.g. a syntax error in a ``.json``
    array). With
    ``crop`` the cut boxes go to ``crop_dir`` (default: OUT's name without ``.jsonl`` + ``_crops``),
    written with OUT or not at all.
    """
    auto = fmt == "auto"
    if not auto:
        get_converter(fmt)  # a usage error before any file is looked at
    if to not in WRITERS:
        raise UsageError(f"--to {to}: unknown format (choose from {', '.join(WRITERS)})")
    if task is not None and task not in BUILTIN_PROMPTS:
        raise UsageError(f"--task {task}: unknown task (choose from {', '.join(BUILTIN_PROMPTS)})")
    warnings = WarningSummary(hints=WARNING_RULES, ignore=ignore)  # refuses an --ignore of no warning rule
    if crop_dir is not None and not crop:  # it would be ignored, and the user expects crops there
        raise UsageError("--crop-dir applies with --crop (where the cut boxes are written)")
    src_path, out_path = Path(src_path), Path(out_path)
    if not src_path.is_file():
        raise UserError(f"{src_path}: no such file")
    refuse_inputs_as_outputs([src_path], [out_path])
    if image_root is not None and not Path(image_root).is_dir():
        raise UserError(f"--image-root {image_root}: not a directory")

    if auto:
        shape = detect.detect(src_path)
    else:
        try:
            shape = detect.detect(src_path)
        except UserError:  # an explicit --from may read what detection cannot tell
            shape = None
    if why := _refusal(shape, fmt, auto, crop):
        raise UserError(f"{src_path}: looks like {shape.name}: {why}")
    if auto:
        fmt = shape.fmt
    for option, value in (("--task", task), ("--columns", columns), ("--crop", crop)):
        if value and fmt not in _FORMATS_OF_OPTION[option]:
            raise UsageError(f"{option} applies to --from {' or '.join(_FORMATS_OF_OPTION[option])}, not {fmt}")
    if fmt == "paddleocr-det" and not crop:
        raise UsageError("--from paddleocr-det needs --crop: each box is cut out of its image into a recognition "
                         "sample (boxes transcribed '###' are skipped)")
    crops_final = Path(crop_dir) if crop_dir else out_path.with_name(out_path.name.removesuffix(".jsonl") + "_crops")

    converter = get_converter(fmt)
    summary = Summary(fmt=fmt, shape=shape, warnings=warnings)
    write = WRITERS[to]
    try:
        with atomic_open(out_path, "w", force=force) as fh, \
                (staged_dir(crops_final, force=force) if crop else contextlib.nullcontext()) as crops_staging:
            src = Source(src_path, Path(image_root) if image_root else None,
                         builtin_or_text(default_prompt) if default_prompt else None, task, columns,
                         Crops(crops_staging, crops_final, out_path) if crop else None)
            converter.prepare(src)
            _convert_records(converter, src, out_path, fh, write, summary, report)
            if not _decide(summary, skip_bad):
                raise _NotWritten
    except _NotWritten:
        pass
    else:
        summary.written = True
    summary.notes = converter.notes()
    if summary.rejected and shape is not None and shape.fmt and shape.fmt not in (fmt, *converter.reads_also):
        summary.hint = f"{src_path} looks like {shape.name}, which --from {shape.fmt} reads"
    return summary


def _convert_records(converter: Converter, src: Source, out_path: Path, fh, write, summary: Summary,
                     report: Callable[[str], None]) -> None:
    """The pass over the records: each converted record's samples to ``fh``, each reject reported."""
    lost_after = None  # the first error past which the reader lost part of the file
    for record in converter.records(src.path):
        try:
            if record.error:
                lost_after = lost_after or (record.where if record.unread_after else None)
                raise Reject("record", record.error)
            if isinstance(record.value, dict) and (media := detect.media_of(record.value)):
                raise Reject("record", f"{detect.MEDIA[media].name}: {detect.MEDIA[media].refusal}")
            examples = converter.convert_record(record, src)
            for example in examples:
                if not example.placed:
                    example.images = [place_image(url, src, out_path) for url in example.images]
        except Reject as exc:
            summary.rejected += 1
            report(f"{record.where}: error: {exc.field}: {exc.why}")
            continue
        for example in examples:
            for rule, message in example.warnings:
                summary.warnings.add(rule, record.where, message)
            write_json_line(fh, write(example))
            summary.samples += 1
        summary.converted += 1
    if lost_after:  # --skip-bad drops the records it reports, not ones it never read
        summary.reasons.append(f"part of the file was not read (after {lost_after}); fix it and run again, "
                               "--skip-bad cannot keep records that were never read")


def _decide(summary: Summary, skip_bad: bool) -> bool:
    """Whether OUT is kept; the reasons it is not go to ``summary.reasons``."""
    if summary.rejected and not skip_bad and not summary.reasons:
        summary.reasons.append(f"{summary.rejected} record(s) rejected (fix them, or pass --skip-bad to keep the rest)")
    if not summary.samples:
        summary.reasons.append("no record converted" if not summary.converted else "no sample to write")
    return not summary.reasons
