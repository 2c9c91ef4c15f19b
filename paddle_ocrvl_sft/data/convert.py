"""``data convert``: other dataset formats → ERNIEKit OCR-VL JSONL, and ERNIEKit → ``messages``.

Layout after LLaMA-Factory's ``data/converter.py``: a small :class:`Converter` base class, one
subclass per source format, and the :data:`CONVERTERS` registry. Every converter reads its file
as a stream of located records and turns each into an :class:`Example` (images + (prompt, answer)
turns); a writer renders the example as an ERNIEKit sample (seed 000 §3.2) or as a ``messages``
record. A record that cannot be converted raises :class:`Reject` naming the field and why; the
driver reports it as ``FILE:LINE: error: FIELD: WHY`` and goes on, so nothing is dropped silently.

Image paths: relative paths in the source resolve against the source file's directory (or
``image_root``) and are rewritten relative to the output's directory, which is where ERNIEKit
resolves them (FACTS.md, "Dataset reader"). URLs, absolute paths and base64 payloads pass through.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from paddle_ocrvl_sft.data import otsl
from paddle_ocrvl_sft.data.sample import MASK, NO_MASK, image_urls, is_remote, make_sample, relocate_image, sample_turns
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import (
    DiscardOutput, Record, atomic_open, iter_lines, iter_records, open_named_file, refuse_inputs_as_outputs, shown,
    write_json_line,
)
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS

# `<image>` (LLaVA, GOT-OCR2.0, ShareGPT, ms-swift) and `<image_00>` (MiniCPM-V multi-image).
_IMAGE_TAG = re.compile(r"<image(?:_\d+)?>")
_USER_ROLES, _ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")


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


@dataclass(frozen=True)
class Source:
    """The file being converted and the options that shape its records."""

    path: Path
    image_root: Path | None = None
    default_prompt: str | None = None  # used for an empty prompt; None: reject the record


def builtin_or_text(prompt: str) -> str:
    """``table`` → ``Table Recognition:`` (a built-in kind name, any case); other text unchanged."""
    return BUILTIN_PROMPTS.get(prompt.strip().lower(), prompt)


# --- the converters ----------------------------------------------------------------------------


class Converter:
    """Reads one source format. Subclasses set ``name``/``summary``/``reader`` and ``convert``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reader: ClassVar[str] = "json"  # json: .json/.jsonl records; csv; lines; manifest: csv or json by suffix

    def records(self, path: Path) -> Iterator[Record]:
        kind = self.reader
        if kind == "manifest":
            kind = "csv" if path.suffix.lower() == ".csv" else "json"
        return {"json": iter_records, "csv": iter_csv_rows, "lines": iter_label_lines}[kind](path)

    def convert(self, value: Any, src: Source) -> Example:
        raise NotImplementedError

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


def _content(content: Any, where: str, images: list[str]) -> str:
    """A turn's text; OpenAI-style lists of parts add their images to ``images``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Reject(where, f"expected a string or a list of parts, got {type(content).__name__}")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image" and any(isinstance(part.get(k), str) for k in ("image", "url", "path")):
            images.append(next(part[k] for k in ("image", "url", "path") if isinstance(part.get(k), str)))
        elif kind == "image_url" and isinstance(part.get("image_url"), (str, dict)):
            url = part["image_url"]
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise Reject(f"{where}[{i}].image_url", "expected {'url': PATH}")
            images.append(url)
        else:
            raise Reject(f"{where}[{i}]", f"expected a text, image or image_url part, got {part!r:.80}")
    return "\n".join(texts)


def chat_turns(messages: Any, key: str, src: Source, images: list[str]) -> tuple[list[tuple[str, str]], int]:
    """Alternating user/assistant turns (``role``/``content`` or ShareGPT ``from``/``value``) and
    the number of image placeholders in the user turns; inline image parts are added to ``images``."""
    if not isinstance(messages, list) or not messages:
        raise Reject(key, "expected a non-empty list of turns")
    turns: list[tuple[str, str]] = []
    n_tags = 0
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
            n_tags += len(_IMAGE_TAG.findall(text))
            turns.append((Converter.prompt(text, f"{where}.{text_key}", src), ""))
        else:
            if len(images) > before:
                raise Reject(f"{where}.{text_key}", "an image in an assistant turn")
            turns[-1] = (turns[-1][0], Converter.answer(text, f"{where}.{text_key}"))
    if len(messages) % 2:
        raise Reject(key, "the last turn is a user turn with no assistant answer")
    return turns, n_tags


def check_placeholders(n_tags: int, images: list[str], key: str) -> None:
    """Placeholders are optional (the image goes before the first prompt either way), but when
    present there must be one per image, as LLaVA, MiniCPM-V and ms-swift require."""
    if n_tags and n_tags != len(images):
        raise Reject(key, f"{n_tags} image placeholder(s) for {len(images)} image(s)")


@register("llava", "got")
class ConversationsConverter(Converter):
    """MiniCPM-V / LLaVA (seed 003) and GOT-OCR2.0 (seed 004), which use LLaVA's layout:
    ``{"image": ..., "conversations": [{"role"|"from": ..., "content"|"value": "<image>\\n..."}, ...]}``."""

    name, summary = "llava", "MiniCPM-V / LLaVA / GOT-OCR2.0 conversations"

    def convert(self, value, src):
        images = _image_list(self.get(value, "image", "images"), "image")
        turns, n_tags = chat_turns(self.get(value, "conversations"), "conversations", src, [])
        check_placeholders(n_tags, images, "conversations")
        return Example(images, turns)


@register("messages")
class MessagesConverter(Converter):
    """OpenAI-style ``{"messages": [...], "images": [...]}`` (content a string or a list of
    text/image/image_url parts) and ShareGPT ``{"conversations": [{"from", "value"}], "images"}``."""

    name, summary = "messages", "OpenAI / ShareGPT / ms-swift messages"

    def convert(self, value, src):
        key = "messages" if isinstance(value, dict) and "messages" in value else "conversations"
        inline: list[str] = []
        turns, n_tags = chat_turns(self.get(value, key), key, src, inline)
        listed = _image_list(value["images"], "images") if value.get("images") else []
        if inline and listed:
            raise Reject("images", "images given both inline in the messages and in 'images'")
        if not inline and not listed:
            raise Reject(key, "no image (ERNIEKit drops samples without one)")
        if listed:
            check_placeholders(n_tags, listed, key)
        return Example(inline or listed, turns)


@register("paddleocr-rec")
class PaddleOCRRecConverter(Converter):
    """PaddleOCR recognition labels: ``image_path<TAB>text`` per line → prompt ``OCR:``."""

    name, summary, reader = "paddleocr-rec", "PaddleOCR recognition label file", "lines"

    def convert(self, value, src):
        image, tab, text = value.partition("\t")
        if not tab:
            raise Reject("line", "expected image_path<TAB>text")
        if not image.strip():
            raise Reject("image_path", "empty")
        if image.startswith("["):  # PaddleOCR picks one of a JSON list of files at random per epoch
            raise Reject("image_path", "a list of files; write one image_path<TAB>text line per file")
        return Example([image.strip()], [(BUILTIN_PROMPTS["ocr"], self.answer(text, "text"))])


@register("csv")
class CsvConverter(Converter):
    """CSV with header ``image,prompt,answer``; ``prompt`` may be a built-in kind (``table``)."""

    name, summary, reader = "csv", "CSV image,prompt,answer", "csv"

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
    converted: int = 0
    rejected: int = 0
    written: bool = False  # False when rejects (without skip_bad), unread input or no converted record kept OUT unwritten
    reasons: list[str] = field(default_factory=list)



def convert_file(
    fmt: str,
    src_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    to: str = "erniekit",
    image_root: str | os.PathLike | None = None,
    default_prompt: str | None = None,
    skip_bad: bool = False,
    force: bool = False,
    report: Callable[[str], None] = print,
) -> Summary:
    """Convert ``src_path`` (format ``fmt``) to ``out_path`` in constant memory.

    Each rejected record is passed to ``report`` as ``FILE:LINE: error: FIELD: WHY``. OUT is
    written atomically, and only when every record converted, or with ``skip_bad`` when at least
    one did (an all-invalid dataset makes ERNIEKit's loader loop forever: FACTS.md) and the reader
    lost nothing (an error it could not read past, e.g. a syntax error in a ``.json`` array).
    """
    converter = get_converter(fmt)
    if to not in WRITERS:
        raise UsageError(f"--to {to}: unknown format (choose from {', '.join(WRITERS)})")
    src_path, out_path = Path(src_path), Path(out_path)
    if not src_path.is_file():
        raise UserError(f"{src_path}: no such file")
    refuse_inputs_as_outputs([src_path], [out_path])
    if image_root is not None and not Path(image_root).is_dir():
        raise UserError(f"--image-root {image_root}: not a directory")
    src = Source(src_path, Path(image_root) if image_root else None,
                 builtin_or_text(default_prompt) if default_prompt else None)
    write, summary = WRITERS[to], Summary()
    with atomic_open(out_path, "w", force=force) as fh:
        lost_after = None  # the first error past which the reader lost part of the file
        for record in converter.records(src_path):
            try:
                if record.error:
                    lost_after = lost_after or (record.where if record.unread_after else None)
                    raise Reject("record", record.error)
                example = converter.convert(record.value, src)
                example.images = [place_image(url, src, out_path) for url in example.images]
            except Reject as exc:
                summary.rejected += 1
                report(f"{record.where}: error: {exc.field}: {exc.why}")
                continue
            write_json_line(fh, write(example))
            summary.converted += 1
        if lost_after:  # --skip-bad drops the records it reports, not ones it never read
            summary.reasons.append(f"part of the file was not read (after {lost_after}); fix it and run again, "
                                   "--skip-bad cannot keep records that were never read")
        elif summary.rejected and not skip_bad:
            summary.reasons.append(f"{summary.rejected} record(s) rejected (fix them, or pass --skip-bad to keep the rest)")
        if not summary.converted:
            summary.reasons.append("no record converted")
        if summary.reasons:
            raise DiscardOutput
        summary.written = True
    return summary
