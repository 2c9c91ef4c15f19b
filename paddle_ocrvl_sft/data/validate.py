"""``data validate``: every rule ERNIEKit applies (or trips on) checked before training starts.

ERNIEKit's reader drops bad samples with a log line and trains on, loops forever when every
sample is bad, and crashes on one unparsable line. Here every problem is reported as
``FILE:LINE: severity: message [rule]`` in one streaming pass (constant memory: per-sample state
is a few bytes in arrays, not Python objects).

The file is read the way ERNIEKit reads it (``vl_sft_dataset_json.py``, ``ExampleSet``): a
``.jsonl`` with ``[json.loads(line) for line in open(path)]``, a ``.json`` with ``json.load``.
``open()`` without an encoding splits lines at ``\n``, ``\r\n`` and a lone ``\r`` (universal
newlines) and decodes with the locale's encoding, so a blank line, a byte-order mark or a
``.json`` that is not one array stops the whole run at start-up: the rules ``blank-line``,
``bom``, ``not-array`` and ``locale-encoding`` below.

Rules (docs/data.md has an example of each):

==================  ========  =============================================================
rule                severity  what
==================  ========  =============================================================
invalid-json        error     the line (or .json array element) does not parse
bom                 error     a UTF-8 byte-order mark opens the file (or a line)
blank-line          error     a blank or whitespace-only line in JSON Lines
not-array           error     a ``.json`` file that is not one JSON array (JSON Lines in a .json)
locale-encoding     warning   non-ASCII text while this Python's locale encoding is not UTF-8
not-object          error     the sample is not a JSON object
missing-field       error     ``image_info`` or ``text_info`` missing
bad-type            error     a field has the wrong type (lists, strings, integer index)
bad-tag             error     a ``tag`` other than ``mask`` / ``no_mask``
first-not-mask      error     the first text is not a ``mask`` prompt
no-answer           error     no ``no_mask`` answer at all: nothing to learn
empty-text          error     an empty (or blank) prompt or answer
merged-turns        warning   consecutive same-tag texts: ERNIEKit concatenates them
trailing-prompt     warning   the last text is a prompt with no answer after it
no-image            error     ``image_info`` is empty
index-out-of-range  error     ``matched_text_index`` outside ``text_info``
image-on-answer     error     an image attached to a ``no_mask`` text inside merged answers
                    warning   ... to the first text of an answer: ERNIEKit moves it to the prompt
remote-image        warning   ``http(s)`` URL: ERNIEKit fetches it with no timeout (not checked)
http-prefix         error     a local path starting with "http": ERNIEKit takes it for a URL
data-url            error     ``data:`` URL: ERNIEKit decodes the field as raw base64
base64-image        warning   inline base64 starting with "/" (JPEG): works, but bloats the dataset
base64-mangled      error     other inline base64: ERNIEKit prefixes the dataset's dir, then decodes
missing-image       error     not a regular file and not base64 (resolved against the dataset's dir)
absolute-path       warning   absolute image path: the dataset is not portable
path-escapes        warning   a relative path that leaves the dataset's directory
unreadable-image    error     the image file exists but cannot be read (permissions, I/O error)
not-image           error     the file's header is not an image format PIL reads
corrupt-image       error     ``--decode``: the full decode fails
aspect-ratio        error     longer side > 200 × shorter side
too-long            error     sample tokens > ``max_seq_len``: ERNIEKit drops it (or cuts turns)
duplicate           warning   same images and same prompt as an earlier sample
untrained-task      warning   with a release: a built-in task prompt that release was never trained on
==================  ========  =============================================================

Warnings are printed summarised per rule (:mod:`paddle_ocrvl_sft.data.warning_summary`): a rule
that fires on many samples is one warning with its count, the first examples and the fix from
:data:`WARNING_RULES`; ``--ignore RULE`` counts a warning rule without printing it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import errno
import hashlib
import io
import locale
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import imagesize

from paddle_ocrvl_sft.data.sample import MASK, NO_MASK, image_location, is_remote, relocate_image, resolve_image, sample_turns
from paddle_ocrvl_sft.errors import UsageError
from paddle_ocrvl_sft.io import (
    atomic_open, iter_lines, iter_records, open_named_file, refuse_existing, refuse_inputs_as_outputs, shown,
    write_json_line,
)
from paddle_ocrvl_sft.prompts import prompt_kind
from paddle_ocrvl_sft.releases import Release, task_prompt_release_note
from paddle_ocrvl_sft.tokens import (
    FACTOR, V1_ASSISTANT_MARKER, AspectRatioError, PixelBounds, TextTokenCounter, image_tokens, sample_tokens,
)

ERROR, WARNING = "error", "warning"
DATASET_SUFFIXES = (".jsonl", ".json")

# Every rule that warns, and how to fix its cause (said when a rule fires on many samples).
WARNING_RULES = {
    "locale-encoding": "train under a UTF-8 locale or with PYTHONUTF8=1",
    "merged-turns": "alternate prompt and answer items",
    "trailing-prompt": "end each sample with its answer",
    "image-on-answer": "point matched_text_index at the prompt before the answer",
    "remote-image": "download the images and name them by local path",
    "base64-image": "write the images to files and name them by path",
    "absolute-path": "name the images relative to the dataset's directory",
    "path-escapes": "keep the dataset file in a directory above its images if it is to be moved with them",
    "duplicate": "drop the repeated samples or give each its own prompt",
    "untrained-task": "keep the task (fine-tuning teaches it) or use a release trained on it (v1.5, v1.6)",
}

# What iter_records reads leniently and ERNIEKit's reader stops on: (rule, message) by what it says.
READER_RULES = {
    "bom": ("bom", (
        "a UTF-8 byte-order mark: ERNIEKit's json.loads stops the whole run on it ('Unexpected UTF-8 BOM'); "
        "save the file as UTF-8 without BOM (--write-clean drops it)")),
    "blank": ("blank-line", (
        "a blank line: ERNIEKit runs json.loads on every line and stops the whole run on it ('Expecting value'); "
        "delete it (--write-clean drops it)")),
    "not-array": ("not-array", (
        "not one JSON array: ERNIEKit reads a .json file with json.load and stops the whole run on anything else; "
        "rename a JSON Lines file to .jsonl (--write-clean writes JSON Lines)")),
}

# Magic bytes of the formats PIL decodes out of the box (what ERNIEKit's Image.open can read).
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    severity: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message} [{self.rule}]"

    def to_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "severity": self.severity, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class ValidateOptions:
    max_seq_len: int | None = 16384
    bounds: PixelBounds = PixelBounds()
    tokenizer_dir: str | os.PathLike | None = None
    decode: bool = False
    problems_kept: int = 1000  # the report keeps the first N; callbacks see all
    # the model's release: its template's assistant marker in the token counts, and the
    # untrained-task rule; None counts with v1's marker and checks no task
    release: Release | None = None


def measure_options(*, model=None, release: str | None = None, max_seq_len: int | None = 16384, tokenizer=None,
                    min_pixels: int | None = None, max_pixels: int | None = None,
                    **extra) -> tuple[Release | None, str, ValidateOptions]:
    """``--model``/``--release``/``--min-pixels``... of ``data validate|stats`` as (the release, one line
    saying where it came from, the options): one place, so the UI's Data page counts and warns as the CLI does."""
    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.errors import UserError

    if model:
        if not Path(model).is_dir():  # else detect() says it cannot tell the release of what is not there
            raise UserError(f"--model {model}: not a directory")
        detection = releases.detect(model, release)
        found = detection.release
        line = f"release {detection.describe()}" + "".join(f"; note: {n}" for n in detection.notes)
        bounds = PixelBounds.from_model_dir(model)
    elif release:
        found = releases.get(release)
        line = f"release {found.name} ({found.title}): --release"
        bounds = PixelBounds(*found.pixel_bounds)
    else:
        found, bounds = None, PixelBounds()
        line = "release: not given (--release or --model): counted with v1's template marker and pixel bounds"
    options = ValidateOptions(max_seq_len=max_seq_len, bounds=bounds.with_overrides(min_pixels, max_pixels),
                              tokenizer_dir=tokenizer, release=found, **extra)
    return found, line, options


@dataclass(frozen=True)
class SampleInfo:
    """What stats needs of one valid sample."""

    path: str
    line: int
    kind: str
    tokens: int
    image_sizes: tuple[tuple[int, int], ...]  # (width, height)


@dataclass
class ValidationReport:
    files: list[str]
    samples: int = 0
    valid: int = 0
    errors: int = 0
    warnings: int = 0
    rejected: int = 0  # samples with at least one error
    problems: list[Problem] = field(default_factory=list)
    by_rule: dict[str, int] = field(default_factory=dict)
    token_lengths: array = field(default_factory=lambda: array("I"))
    tokens_exact: bool = False

    @property
    def ok(self) -> bool:
        """No error and something to train on (ERNIEKit loops forever on an empty dataset)."""
        return self.errors == 0 and self.valid > 0

    @property
    def max_tokens(self) -> int:
        return max(self.token_lengths, default=0)

    def summary(self) -> str:
        kind = "exact (tokenizer)" if self.tokens_exact else "estimated (no --tokenizer)"
        lines = [
            f"{self.samples} samples in {len(self.files)} file(s): {self.valid} valid, {self.rejected} rejected"
            f" ({self.errors} errors, {self.warnings} warnings)",
        ]
        if self.rejected:
            lines.append(f"ERNIEKit would silently drop or crash on the {self.rejected} rejected sample(s): fix them first.")
        if reading := {rule: self.by_rule[rule] for rule, _ in READER_RULES.values() if rule in self.by_rule}:
            found = ", ".join(f"{rule}={n}" for rule, n in reading.items())
            lines.append(f"ERNIEKit's reader would stop the run at start-up on {found} (--write-clean writes a copy without them).")
        if self.valid == 0:
            lines.append("No valid sample: ERNIEKit's loader would loop forever on this dataset.")
        if self.by_rule:
            lines.append("by rule: " + ", ".join(f"{r}={n}" for r, n in sorted(self.by_rule.items())))
        if self.token_lengths:
            lines.append(f"longest sample: {self.max_tokens} tokens, text tokens {kind}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "samples": self.samples,
            "valid": self.valid,
            "rejected": self.rejected,
            "errors": self.errors,
            "warnings": self.warnings,
            "by_rule": dict(sorted(self.by_rule.items())),
            "max_tokens": self.max_tokens,
            "tokens_exact": self.tokens_exact,
        }


class _Checker:
    """Checks one sample; collects (severity, rule, message) triples."""

    def __init__(self, options: ValidateOptions):
        self.options = options
        marker = options.release.assistant_marker if options.release else V1_ASSISTANT_MARKER
        self.count_text = TextTokenCounter(options.tokenizer_dir, marker)

    def check(self, sample: Any, dataset: Path, line: int) -> tuple[list[tuple[str, str, str]], SampleInfo | None, tuple | None]:
        found: list[tuple[str, str, str]] = []

        def add(severity: str, rule: str, message: str) -> None:
            found.append((severity, rule, message))

        if not isinstance(sample, dict):
            add(ERROR, "not-object", f"a sample must be a JSON object, got {type(sample).__name__}")
            return found, None, None
        texts, images = sample.get("text_info"), sample.get("image_info")
        for name, value in (("text_info", texts), ("image_info", images)):
            if value is None:
                add(ERROR, "missing-field", f"{name}: required field missing")
            elif not isinstance(value, list):
                add(ERROR, "bad-type", f"{name}: must be a list, got {type(value).__name__}")
        if found:
            return found, None, None

        tags_ok = self._check_texts(texts, add)
        sizes, remote = self._check_images(images, texts, dataset, add, tags_ok)
        if any(sev == ERROR for sev, _, _ in found):
            return found, None, None

        turns = sample_turns(sample)
        if self.options.release is not None:
            for prompt in dict.fromkeys(prompt for prompt, _ in turns):
                if note := task_prompt_release_note(prompt, self.options.release):
                    add(WARNING, "untrained-task", note)
        try:
            counts = [image_tokens(h, w, self.options.bounds) for w, h in sizes]
        except AspectRatioError:  # already reported per image
            return found, None, None
        # a remote image's size is unknown: count the most tokens max_pixels allows (an upper bound)
        counts += [self.options.bounds.max_pixels // (FACTOR * FACTOR)] * remote
        tokens = sample_tokens(counts, turns, self.count_text)
        limit = self.options.max_seq_len
        if limit is not None and tokens > limit:
            how = "" if self.count_text.exact else " (estimated: pass --tokenizer MODEL_DIR for exact counts)"
            fate = "drops it" if len(turns) == 1 else "cuts it to the turns that fit"
            add(ERROR, "too-long", f"sample is {tokens} tokens{how}, above max_seq_len {limit}: ERNIEKit {fate}")
            return found, None, None
        dedup_key = (tuple(image_location(i["image_url"], dataset) for i in images), turns[0][0])
        return found, SampleInfo(str(dataset), line, prompt_kind(turns[0][0]), tokens, tuple(sizes)), dedup_key

    @staticmethod
    def _check_texts(texts: list, add) -> bool:
        tags = []
        for i, item in enumerate(texts):
            where = f"text_info[{i}]"
            if not isinstance(item, dict):
                add(ERROR, "bad-type", f"{where}: must be an object with text and tag")
                tags.append(None)
                continue
            text, tag = item.get("text"), item.get("tag")
            if not isinstance(text, str):
                add(ERROR, "bad-type" if "text" in item else "missing-field", f"{where}.text: must be a string")
            elif not text.strip():
                add(ERROR, "empty-text", f"{where}.text: empty {'prompt' if tag == MASK else 'answer'}")
            if tag not in (MASK, NO_MASK):
                add(ERROR, "bad-tag", f"{where}.tag: must be 'mask' or 'no_mask', got {tag!r}")
            tags.append(tag)
        if not texts:
            add(ERROR, "no-answer", "text_info: empty")
            return False
        if tags[0] != MASK:
            add(ERROR, "first-not-mask", f"text_info[0].tag: the first text must be the 'mask' prompt, got {tags[0]!r}")
        if NO_MASK not in tags:
            add(ERROR, "no-answer", "text_info: no 'no_mask' answer: nothing to learn")
        for i in range(1, len(tags)):
            if tags[i] == tags[i - 1] and tags[i] in (MASK, NO_MASK):
                add(WARNING, "merged-turns", f"text_info[{i}]: second '{tags[i]}' in a row: ERNIEKit concatenates them")
        if len(tags) > 1 and tags[-1] == MASK:
            add(WARNING, "trailing-prompt", f"text_info[{len(tags) - 1}]: a prompt with no answer after it")
        return all(t in (MASK, NO_MASK) for t in tags)

    def _check_images(self, images: list, texts: list, dataset: Path, add, tags_ok: bool) -> tuple[list[tuple[int, int]], int]:
        """(width, height) of every readable local image, and how many images are remote."""
        if not images:
            add(ERROR, "no-image", "image_info: no image (PaddleOCR-VL samples need at least one)")
        sizes, remote = [], 0
        for i, item in enumerate(images):
            where = f"image_info[{i}]"
            if not isinstance(item, dict):
                add(ERROR, "bad-type", f"{where}: must be an object with image_url and matched_text_index")
                continue
            index = item.get("matched_text_index", 0)
            if not isinstance(index, int) or isinstance(index, bool):
                add(ERROR, "bad-type", f"{where}.matched_text_index: must be an integer, got {index!r}")
            elif not 0 <= index < len(texts):
                add(ERROR, "index-out-of-range", f"{where}.matched_text_index: {index} is outside text_info (0..{len(texts) - 1})")
            elif tags_ok and texts[index].get("tag") != MASK:
                # ERNIEKit moves an image on the first text of an answer group to the prompt
                # before it, and rejects one further inside the group (input_ids_messaging)
                if index > 0 and texts[index - 1].get("tag") == MASK:
                    add(WARNING, "image-on-answer", f"{where}.matched_text_index: {index} points at a 'no_mask' answer; "
                        "ERNIEKit moves the image to the prompt before it")
                else:
                    add(ERROR, "image-on-answer", f"{where}.matched_text_index: {index} points inside merged 'no_mask' answers; "
                        "ERNIEKit rejects the sample ('Image should not in No-Mask Data')")
            url = item.get("image_url")
            if not isinstance(url, str) or not url:
                add(ERROR, "bad-type" if "image_url" in item else "missing-field", f"{where}.image_url: must be a non-empty string")
                continue
            if url.startswith("http") and not is_remote(url):
                add(ERROR, "http-prefix", f"{where}.image_url: {url[:80]}: ERNIEKit takes anything starting with 'http' for a URL; "
                    f"write it as ./{url}")
                continue
            if is_remote(url):
                add(WARNING, "remote-image", f"{where}.image_url: {url[:80]}: ERNIEKit downloads it with no timeout; not checked")
                remote += 1
                continue
            size = self._image_size(url, dataset, f"{where}.image_url", add)
            if size is None:
                continue
            w, h = size
            if max(w, h) > 200 * min(w, h):
                add(ERROR, "aspect-ratio", f"{where}.image_url: {w}x{h} has aspect ratio {max(w, h) / min(w, h):.0f} > 200")
                continue
            sizes.append(size)
        return sizes, remote

    def _image_size(self, url: str, dataset: Path, where: str, add) -> tuple[int, int] | None:
        if url.startswith("data:"):
            add(ERROR, "data-url", f"{where}: a data: URL; ERNIEKit decodes image_url as raw base64: drop the 'data:...;base64,' prefix")
            return None
        path = resolve_image(url, dataset)
        try:
            fh = open_named_file(path)
        except PermissionError:
            add(ERROR, "unreadable-image", f"{where}: {shown(path)}: permission denied")
            return None
        except OSError as exc:  # not a regular file: ERNIEKit falls back to decoding the field as base64
            data = _decode_base64(url)
            if data is None:
                why = "no such file" if exc.errno == errno.ENOENT else exc.strerror
                add(ERROR, "missing-image", f"{where}: {shown(url[:120])}: {why} ({shown(path)})")
                return None
            if not url.startswith("/"):
                # ERNIEKit joins every non-absolute image_url to the dataset's dir before it
                # falls back to base64, so only base64 that starts with "/" (JPEG: "/9j/") survives
                add(ERROR, "base64-mangled", f"{where}: inline base64 image: ERNIEKit prefixes the dataset's directory "
                    "before decoding it, which corrupts it; write the image to a file")
                return None
            add(WARNING, "base64-image", f"{where}: inline base64 image ({len(data) // 1024} KiB): works, but bloats the dataset")
            return self._read_size(io.BytesIO(data), where, add)
        if os.path.isabs(url):
            add(WARNING, "absolute-path", f"{where}: absolute path {url}: the dataset only works on this machine")
        elif os.path.normpath(url).split(os.sep, 1)[0] == os.pardir:
            add(WARNING, "path-escapes", f"{where}: {url} leaves the dataset's directory")
        with fh:
            return self._read_size(fh, where, add, path)

    def _read_size(self, fh, where: str, add, path: Path | None = None) -> tuple[int, int] | None:
        head = fh.read(16)
        label = f"{where}: {path}" if path else where
        if not any(head.startswith(magic) for magic, _ in _IMAGE_MAGIC) and not (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            add(ERROR, "not-image", f"{label}: not an image PIL can read (unknown header)")
            return None
        fh.seek(0)
        w, h = imagesize.get(fh, exif_rotation=False)
        if w <= 0 or h <= 0:
            add(ERROR, "not-image", f"{label}: image header unreadable or truncated")
            return None
        if self.options.decode:
            from PIL import Image  # full decode only when asked: 20-100x slower than the header

            fh.seek(0)
            try:
                with Image.open(fh) as im:
                    im.load()
            except Exception as exc:  # noqa: BLE001 - any decoder failure means ERNIEKit fails too
                add(ERROR, "corrupt-image", f"{label}: decode failed: {exc}")
                return None
        return w, h


def _decode_base64(text: str) -> bytes | None:
    if len(text) < 16:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _key_hash(key: tuple) -> int:
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")


def check_dataset_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Fail fast (usage error) on inputs that are not existing .jsonl/.json files."""
    checked = []
    for p in map(Path, paths):
        if not p.is_file():
            raise UsageError(f"{p}: {'a directory, not a dataset file' if p.is_dir() else 'no such file'}")
        if p.suffix.lower() not in DATASET_SUFFIXES:
            raise UsageError(f"{p}: expected a .jsonl or .json dataset file")
        checked.append(p)
    if not checked:
        raise UsageError("no dataset file given")
    return checked


def validate_paths(
    paths: Iterable[str | os.PathLike],
    options: ValidateOptions = ValidateOptions(),
    *,
    on_problem: Callable[[Problem], None] | None = None,
    on_sample: Callable[[SampleInfo], None] | None = None,
    on_record: Callable[[Any, Path, int, list[Problem]], None] | None = None,
) -> ValidationReport:
    """Validate datasets in one streaming pass.

    ``on_problem`` sees every problem as found (duplicates come at the end: they need the whole
    pass); ``on_sample`` sees each valid sample; ``on_record`` sees every record with its errors
    (how ``--write-clean`` splits good rows from rejects).
    """
    files = check_dataset_paths(paths)
    checker = _Checker(options)
    report = ValidationReport([str(p) for p in files], tokens_exact=checker.count_text.exact)
    hashes, where_file, where_line = array("Q"), array("I"), array("I")

    def emit(problem: Problem) -> None:
        if problem.severity == ERROR:
            report.errors += 1
        else:
            report.warnings += 1
        report.by_rule[problem.rule] = report.by_rule.get(problem.rule, 0) + 1
        if len(report.problems) < options.problems_kept:
            report.problems.append(problem)
        if on_problem:
            on_problem(problem)

    for file_index, path in enumerate(files):

        def tolerated(line: int, what: str, path: Path = path) -> None:
            rule, message = READER_RULES[what]
            emit(Problem(str(path), line, ERROR, rule, message))

        for record in iter_records(path, on_tolerated=tolerated):
            report.samples += 1
            if record.error is not None:
                found, info, key = [(ERROR, "invalid-json", record.error)], None, None
            else:
                found, info, key = checker.check(record.value, path, record.line)
            problems = [Problem(str(path), record.line, sev, rule, msg) for sev, rule, msg in found]
            for problem in problems:
                emit(problem)
            if on_record:
                on_record(record.value, path, record.line, problems)
            if info is None:
                report.rejected += 1
                continue
            report.valid += 1
            report.token_lengths.append(info.tokens)
            hashes.append(_key_hash(key))
            where_file.append(file_index)
            where_line.append(record.line)
            if on_sample:
                on_sample(info)
        if locale_problem := _locale_encoding_problem(path):
            emit(locale_problem)

    for first, dup in _duplicates(hashes):
        emit(
            Problem(
                str(files[where_file[dup]]), where_line[dup], WARNING, "duplicate",
                f"same images and prompt as {files[where_file[first]]}:{where_line[first]}",
            )
        )
    return report


def _locale_encoding_problem(path: Path) -> Problem | None:
    """ERNIEKit opens the dataset with ``open(path)``: the locale's encoding, not UTF-8. Under a
    UTF-8 locale (Linux's default, PEP 538 coerces the C locale to one) that is the same thing;
    under another one, the first non-ASCII line would fail to decode or be read as other text."""
    encoding = locale.getpreferredencoding(False)
    if codecs.lookup(encoding).name == "utf-8":
        return None
    for line, text, _ in iter_lines(path, skip_blank=False):
        if text is not None and not text.isascii():
            return Problem(str(path), line, WARNING, "locale-encoding",
                           f"non-ASCII text, and this Python's locale encoding is {encoding}: ERNIEKit opens datasets "
                           "with open() and no encoding, so started here it would fail on (or misread) this UTF-8 "
                           "file; train under a UTF-8 locale or with PYTHONUTF8=1")
    return None


def _duplicates(hashes: array) -> list[tuple[int, int]]:
    """(first index, later index) pairs of equal hashes, in input order of the later one."""
    import numpy as np  # sorting 100k 64-bit keys in numpy keeps memory at 8 bytes per sample

    if not hashes:
        return []
    keys = np.frombuffer(hashes, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeat = np.concatenate(([False], sorted_keys[1:] == sorted_keys[:-1]))
    # position of the first element of each run of equal keys (stable sort: the earliest sample)
    run_start = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(keys))))
    pairs = [(int(order[run_start[pos]]), int(order[pos])) for pos in np.flatnonzero(repeat)]
    return sorted(pairs, key=lambda p: p[1])


def dropped_on_write(report: ValidationReport) -> str:
    """What ``--write-clean`` leaves out besides the rejected rows, in words ('' for nothing)."""
    counts = [(report.by_rule.get(rule, 0), name) for rule, name in (("bom", "byte-order mark"), ("blank-line", "blank line"))]
    return ", ".join(f"{n} {name}{'s' * (n > 1)}" for n, name in counts if n)


def rejects_path(out: str | os.PathLike) -> Path:
    """``clean.jsonl`` → ``clean.rejects.jsonl``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl").removesuffix(".json") + ".rejects.jsonl")


def validate_and_write_clean(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    options: ValidateOptions = ValidateOptions(),
    *,
    force: bool = False,
    on_problem: Callable[[Problem], None] | None = None,
) -> ValidationReport:
    """Validate and split the rows: good ones to ``out``, rejected ones (with reasons) beside it.

    Inputs are never modified; relative image paths are rewritten so they resolve from ``out``.
    ``out`` is JSON Lines that ERNIEKit's reader reads: UTF-8 without a BOM, ``\n`` line ends, no
    blank line (what ``dropped_on_write`` of the report lists is left out).
    """
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise UsageError(f"--write-clean {out}: give a .jsonl name (the clean copy is JSON Lines; ERNIEKit reads "
                         "a .json file as one JSON array)")
    rejects = rejects_path(out)
    files = check_dataset_paths(paths)
    refuse_inputs_as_outputs(files, [out, rejects])
    refuse_existing(out, rejects, force=force)
    with atomic_open(out) as good, atomic_open(rejects) as bad:

        def on_record(value, path, line, problems):
            errors = [p for p in problems if p.severity == ERROR]
            if errors:
                entry = {"source": f"{path}:{line}", "errors": [f"{p.message} [{p.rule}]" for p in errors], "record": value}
                write_json_line(bad, entry)
                return
            for info in value["image_info"]:
                info["image_url"] = relocate_image(info["image_url"], path, out)
            write_json_line(good, value)

        return validate_paths(files, options, on_problem=on_problem, on_record=on_record)
