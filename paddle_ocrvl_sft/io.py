"""File helpers shared by every stage: streaming record readers and atomic, non-clobbering writes.

Nothing is lost: every output is written to a temporary file beside its target and moved into
place with ``os.replace`` (atomic on POSIX), and existing outputs are refused without ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from paddle_ocrvl_sft.errors import UserError

_CHUNK = 1 << 16
BOM = b"\xef\xbb\xbf"
Tolerated = Callable[[int, str], None]  # on_tolerated(line, what): see iter_records


@dataclass(frozen=True)
class Record:
    """One top-level JSON value of a dataset file and where it starts (1-based line)."""

    path: Path
    line: int
    value: Any = None
    error: str | None = None  # set instead of ``value`` when the text does not parse
    # With ``error``: the reader could not resynchronise, so part of the file after this line was
    # not read at all (a .json array stops at its first syntax error). Skipping the record is not
    # enough to keep the rest: the rest was never seen.
    unread_after: bool = False

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def iter_records(path: str | os.PathLike, *, on_tolerated: Tolerated | None = None) -> Iterator[Record]:
    """Stream the records of a ``.jsonl`` file or a top-level ``.json`` array in constant memory.

    A ``.jsonl`` file is always read line by line; a ``.json`` file is a JSON array when it
    starts with ``[`` and JSON Lines otherwise. Unparsable JSONL lines and undecodable bytes come
    back as records with ``error`` set, so a validator can report every bad line instead of
    stopping at the first (ERNIEKit stops there). A ``.json`` file is streamed element by element;
    its first syntax error ends the stream (that error record has ``unread_after`` set).

    The reading is lenient where ERNIEKit's is not; ``on_tolerated(line, what)`` hears of each
    such place: ``"bom"`` (a byte-order mark opening a line or the file), ``"blank"`` (a blank or
    whitespace-only JSONL line), ``"not-array"`` (a ``.json`` file read as JSON Lines).
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        yield from _iter_jsonl(path, on_tolerated)
    elif _starts_with_bracket(path):
        yield from _iter_json_array(path, on_tolerated)
    else:
        if on_tolerated:
            on_tolerated(1, "not-array")
        yield from _iter_jsonl(path, on_tolerated)


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as fh:
        first = True
        while chunk := fh.read(_CHUNK):
            chunk = (chunk.removeprefix(BOM) if first else chunk).lstrip(b" \t\r\n")
            if chunk:
                return chunk.startswith(b"[")
            first = False
    return False


def iter_lines(
    path: str | os.PathLike, *, skip_blank: bool = True, on_tolerated: Tolerated | None = None
) -> Iterator[tuple[int, str | None, str | None]]:
    """The lines of a UTF-8 text file, streamed as ``(lineno, text, None)`` (1-based, line ending
    kept) or ``(lineno, None, why)`` for a line that is not UTF-8.

    Lines end at ``\n``, ``\r\n`` or a lone ``\r``: Python's universal newlines, what ``open()`` in
    text mode (and so ERNIEKit's reader) splits on; ``\u2028`` and the like do not end a line.
    Each line is decoded on its own, so a bad byte costs its line only and the numbers stay right.
    A BOM opening a line is dropped; blank lines are skipped unless ``skip_blank`` is false.
    ``on_tolerated`` hears of both (``"bom"``, ``"blank"``).
    """
    lineno = 0
    with open(path, "rb") as fh:
        for chunk in fh:  # ends at b"\n"; a lone b"\r" can only sit inside a chunk
            for raw in chunk.splitlines(keepends=True) if b"\r" in chunk else (chunk,):
                lineno += 1
                if raw.startswith(BOM):
                    raw = raw[len(BOM) :]
                    if on_tolerated:
                        on_tolerated(lineno, "bom")
                if skip_blank and not raw.strip():
                    if on_tolerated:
                        on_tolerated(lineno, "blank")
                    continue
                try:
                    yield lineno, raw.decode("utf-8"), None
                except UnicodeDecodeError as exc:
                    yield lineno, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"


def _iter_jsonl(path: Path, on_tolerated: Tolerated | None) -> Iterator[Record]:
    for lineno, text, error in iter_lines(path, on_tolerated=on_tolerated):
        if error:
            yield Record(path, lineno, error=error)
            continue
        try:
            yield Record(path, lineno, json.loads(text))
        except json.JSONDecodeError as exc:
            yield Record(path, lineno, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
        except RecursionError:
            yield Record(path, lineno, error="invalid JSON: nested too deeply")
        except ValueError as exc:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
            yield Record(path, lineno, error=f"invalid JSON: {exc}")


def _iter_json_array(path: Path, on_tolerated: Tolerated | None) -> Iterator[Record]:
    """Decode ``[v1, v2, ...]`` one element at a time; the buffer holds about one element."""
    reader = _ArrayReader(path, on_tolerated)
    try:
        yield from reader
    except _ArrayError as exc:
        yield Record(path, exc.line, error=exc.message, unread_after=True)


class _ArrayError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class _ArrayReader:
    """``raw_decode`` over a sliding text buffer, tracking line numbers.

    Read in text mode with universal newlines, as ``json.load`` in ERNIEKit sees the file.
    """

    def __init__(self, path: Path, on_tolerated: Tolerated | None = None):
        self.path, self.on_tolerated = path, on_tolerated
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def _more(self, fh) -> bool:
        try:
            chunk = fh.read(_CHUNK)
        except UnicodeDecodeError as exc:
            raise _ArrayError(self.line, f"not UTF-8 text ({exc.reason})") from None
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        self.eof = not chunk
        return bool(chunk)

    def _peek(self, fh) -> str:
        """The next non-blank character ('' at end of file), counting the newlines skipped."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.line += self.buf[self.pos] == "\n"
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more(fh):
                return ""

    def _value(self, fh) -> Any:
        # A value is accepted only when something follows it (or at EOF), so a number split
        # across two reads is never taken for a shorter one.
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:
                    self.line += self.buf.count("\n", self.pos, end)
                    self.pos = end
                    return value
            except json.JSONDecodeError as exc:
                if self.eof:
                    line = self.line + self.buf.count("\n", self.pos, exc.pos)
                    raise _ArrayError(line, f"invalid JSON: {exc.msg}") from None
            except RecursionError:
                raise _ArrayError(self.line, "invalid JSON: nested too deeply") from None
            except ValueError as exc:  # an integer of more than 4300 digits
                raise _ArrayError(self.line, f"invalid JSON: {exc}") from None
            self._more(fh)

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "r", encoding="utf-8") as fh:
            self._more(fh)
            if self.buf.startswith("\ufeff"):  # only here: json.load fails on one anywhere else too
                self.pos = 1
                if self.on_tolerated:
                    self.on_tolerated(1, "bom")
            if self._peek(fh) != "[":
                raise _ArrayError(self.line, "a .json dataset must be a JSON array of samples")
            self.pos += 1
            if self._peek(fh) == "]":
                self.pos += 1
            else:
                while True:
                    if not self._peek(fh):
                        raise _ArrayError(self.line, "unexpected end of file inside the JSON array")
                    start = self.line
                    yield Record(self.path, start, self._value(fh))
                    sep = self._peek(fh)
                    self.pos += 1
                    if sep == "]":
                        break
                    if sep != ",":
                        found = repr(sep) if sep else "end of file"
                        raise _ArrayError(self.line, f"expected ',' or ']' between samples, found {found}")
            if self._peek(fh):
                raise _ArrayError(self.line, "unexpected text after the closing ']'")


def read_text(path: str | os.PathLike, *, missing: str = "no such file") -> str:
    """A small text file a user pointed at (config, model file); failures become one clear error."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def read_json_if_present(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; None when there is no such file. An unreadable file is a
    UserError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def shown(text: str | os.PathLike) -> str:
    """A path or value from user data, for a message: as is, or quoted with escapes when it holds
    characters a terminal would swallow or mangle (NUL, control characters, lone surrogates)."""
    text = str(text)
    return text if text.isprintable() else repr(text)


def open_named_file(path: str | os.PathLike, mode: str = "rb", **kwargs):
    """``open()`` for a path that came from user data (an image a sample names, a CSV a manifest
    points at). Only a regular file is opened: a FIFO would block until a writer comes, a device
    could be endless. Every refusal is an ``OSError`` whose ``strerror`` says why in words,
    including the ones Python raises as ``ValueError`` before asking the OS (a NUL character,
    a lone surrogate), so callers make it that row's error with one ``except OSError``.
    """
    try:
        mode_bits = os.stat(path).st_mode
    except ValueError as exc:
        why = "the path contains a NUL character" if "null" in str(exc) else f"not a usable file name ({exc})"
        raise OSError(errno.EINVAL, why, str(path)) from None
    if stat.S_ISDIR(mode_bits):
        raise IsADirectoryError(errno.EISDIR, "a directory, not a file", str(path))
    if not stat.S_ISREG(mode_bits):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))
    return open(path, mode, **kwargs)


# --- writing -------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, force: bool = True, encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; on success move it over ``path`` in one step.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched;
    :class:`DiscardOutput` does the same on purpose and is not propagated.
    With ``force=False`` an existing ``path`` is refused before anything is written.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name")
    if not force and path.exists():
        raise UserError(f"{path}: already exists (use --force to overwrite)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding, newline=None if "b" in mode else "\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not isinstance(exc, DiscardOutput):
            raise


class DiscardOutput(Exception):
    """Raise inside ``atomic_open`` to abandon the write: the target stays as it was."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, *, force: bool = True) -> None:
    with atomic_open(path, "w", force=force) as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, force: bool = True) -> None:
    with atomic_open(path, "wb", force=force) as fh:
        fh.write(data)


def write_json_line(fh, value: Any) -> None:
    """One JSON Lines row, non-ASCII text kept as it is. A lone surrogate (read from a ``"\\ud800"``
    escape) cannot be written as UTF-8: that row is written with ``\\u`` escapes, which read back
    the same; the text file encodes a row whole before writing any of it."""
    try:
        fh.write(json.dumps(value, ensure_ascii=False) + "\n")
    except UnicodeEncodeError:
        fh.write(json.dumps(value) + "\n")


def write_json(path: str | os.PathLike, obj: Any, *, force: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n", force=force)


def refuse_existing(*paths: str | os.PathLike, force: bool) -> None:
    """Fail before any work when an output already exists and ``--force`` was not given."""
    if force:
        return
    for p in paths:
        p = Path(p)
        if p.exists() and (p.is_file() or any(p.iterdir())):
            raise UserError(f"{p}: already exists (use --force to overwrite)")


def refuse_inputs_as_outputs(inputs, outputs) -> None:
    """An output that is (or would replace) one of the inputs is refused, ``--force`` or not."""
    resolved = {Path(p).resolve() for p in inputs}
    for out in outputs:
        if Path(out).resolve() in resolved:
            raise UserError(f"{out}: this output would replace an input file; choose another name")


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, *, force: bool):
    """Build a directory under a temporary name and swap it into place only when complete.

    An existing ``target`` is refused without ``force``; with ``force`` it is replaced only after
    the new one is complete, so an interrupted run never leaves a half-written directory.
    """
    target = Path(target)
    refuse_existing(target, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
