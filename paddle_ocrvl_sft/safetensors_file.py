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


def merge_safetensors(shards: list[Path], out: Path) -> None:
    """Stream several shards into one file, copying each tensor's bytes unchanged."""
    entries = []  # (name, shard, begin, end, dtype, shape)
    metadata = None
    for shard in shards:
        header = read_header(shard)
        metadata = metadata or header.get("__metadata__")
        start = 8 + _stored_header_size(shard)
        for name, (dtype, shape) in tensor_specs(header).items():
            begin, end = header[name]["data_offsets"]
            entries.append((name, shard, start + begin, start + end, dtype, shape))
    entries.sort()
    header, offset = {}, 0
    for name, _, begin, end, dtype, shape in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    with open(out, "wb") as dst, contextlib.ExitStack() as stack:
        dst.write(_header_bytes(header, metadata))
        handles = {shard: stack.enter_context(open(shard, "rb")) for shard in dict.fromkeys(shards)}
        for name, shard, begin, end, *_ in entries:
            src = handles[shard]
            src.seek(begin)
            _copy_range(src, dst, end - begin)


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
