"""The safetensors container read and written directly: an 8-byte header size, a JSON header, raw bytes.

No framework is needed (bf16 included), so export, the tiny-model builder and the training backends
can inspect, copy and merge weights without importing paddle or torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file: ``{name: {dtype, shape, data_offsets}, "__metadata__"?}``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100 * 2**20:
                raise ValueError("header larger than 100 MiB")
            return json.loads(fh.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None


def truncation(path: str | os.PathLike) -> str | None:
    """None when the file holds every byte its header promises; else how much is missing (a cut-short write)."""
    path = Path(path)
    header = read_header(path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    expected = 8 + _stored_header_size(path) + end
    size = path.stat().st_size
    return None if size >= expected else f"truncated ({size} of {expected} bytes)"


def tensor_specs(header: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``{name: (dtype_code, shape, raw_bytes)}`` in the safetensors layout (names sorted)."""
    header, offset = {}, 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = _header_bytes(header, metadata)
    with open(path, "wb") as fh:
        fh.write(blob)
        for name in sorted(tensors):
            fh.write(tensors[name][2])


def merge_safetensors(shards: list[Path], out: Path, take: dict[str, Path] | None = None) -> None:
    """Stream several shards into one file, copying each tensor's bytes unchanged.

    ``take`` adds single tensors by name from other files (e.g. the base model's tensors a trainer
    does not save).
    """
    entries = []  # (name, file, begin, end, dtype, shape)
    metadata = None
    wanted: dict[Path, set[str] | None] = {shard: None for shard in shards}
    for name, path in (take or {}).items():
        wanted.setdefault(path, set()).add(name)
    for path, names in wanted.items():
        header = read_header(path)
        metadata = metadata or header.get("__metadata__")
        start = 8 + _stored_header_size(path)
        for name, (dtype, shape) in tensor_specs(header).items():
            if names is None or name in names:
                begin, end = header[name]["data_offsets"]
                entries.append((name, path, start + begin, start + end, dtype, shape))
    entries.sort()
    header, offset = {}, 0
    for name, _, begin, end, dtype, shape in entries:
        if name in header:
            raise UserError(f"{out}: tensor {name} is in more than one input file")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    with open(out, "wb") as dst, contextlib.ExitStack() as stack:
        dst.write(_header_bytes(header, metadata))
        handles = {path: stack.enter_context(open(path, "rb")) for path in wanted}
        for name, path, begin, end, *_ in entries:
            src = handles[path]
            src.seek(begin)
            _copy_range(src, dst, end - begin)


_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_tensors(path: str | os.PathLike, names=None) -> dict:
    """Tensors of a safetensors file as numpy arrays (BF16 widened to float32 exactly); all or ``names``."""
    import numpy as np

    path = Path(path)
    header = read_header(path)
    start = 8 + _stored_header_size(path)
    out = {}
    with open(path, "rb") as fh:
        for name, (dtype, shape) in tensor_specs(header).items():
            if names is not None and name not in names:
                continue
            begin, end = header[name]["data_offsets"]
            fh.seek(start + begin)
            raw = fh.read(end - begin)
            if dtype == "BF16":
                array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype in _NUMPY_DTYPES:
                array = np.frombuffer(raw, _NUMPY_DTYPES[dtype])
            else:
                raise UserError(f"{path}: tensor {name} has dtype {dtype}, which this reader does not know")
            out[name] = array.reshape(shape)
    return out


def _header_bytes(header: dict, metadata: dict | None) -> bytes:
    if metadata:
        header = {"__metadata__": metadata, **header}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the spec pads the header so tensor data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _stored_header_size(path: Path) -> int:
    with open(path, "rb") as fh:
        return struct.unpack("<Q", fh.read(8))[0]


def _copy_range(src, dst, length: int, chunk: int = 1 << 24) -> None:
    while length > 0:
        data = src.read(min(chunk, length))
        if not data:
            raise UserError(f"{src.name}: truncated safetensors file")
        dst.write(data)
        length -= len(data)
