"""Check a safetensors header before anything trusts it.

A safetensors file is an 8-byte little-endian header length N, N bytes of
JSON (``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``), then the tensor bytes; offsets count from
the end of the header (format spec: huggingface/safetensors README). A file
from the internet can lie in any of these numbers. :func:`check_file`
refuses, naming the file and the tensor, a header that

* is longer than the file or than 100 MB (the reference reader's own cap),
* is not a JSON object, or has metadata that is not ``str -> str``,
* gives a dtype we do not know, a shape that is not a list of sizes >= 0,
* gives offsets whose span is not ``prod(shape) * itemsize`` bytes,
  that run past the end of the file, overlap another tensor, or leave a gap,

before the bytes reach ``safe_open`` (which memory-maps the file and would
otherwise fail with a message that does not name it). All readers in
tsuika open safetensors files through :func:`safe_open_checked` /
:func:`load_file_checked`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from tsuika.errors import TsuikaError

MAX_HEADER = 100_000_000
ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class SafetensorsHeaderError(TsuikaError, ValueError):
    """A safetensors file whose header cannot be trusted; the message names the file."""


def check_bytes(data: bytes, name: str | os.PathLike[str] = "<bytes>") -> dict[str, Any]:
    """Check the header of a whole safetensors file held in ``data``; the parsed header."""
    return _check(data[:8], lambda n: data[8 : 8 + n], len(data), str(name))


def check_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the header of the file at ``path`` (reads only the header); the parsed header."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        return _check(head, lambda n: f.read(n), size, str(path))


def _check(head: bytes, read: Any, size: int, name: str) -> dict[str, Any]:
    def fail(problem: str) -> SafetensorsHeaderError:
        return SafetensorsHeaderError(f"{name}: not a readable safetensors file: {problem}")

    if len(head) < 8:
        raise fail(f"{size} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > size:
        raise fail(f"header length {n} runs past the end of the {size}-byte file")
    try:
        header = json.loads(read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise fail("__metadata__ must map strings to strings")
    spans = sorted(
        _span(key, entry, fail) for key, entry in header.items() if key != "__metadata__"
    )
    _check_layout(spans, size - 8 - n, fail)
    return header


def _span(key: str, entry: Any, fail: Any) -> tuple[int, int, str]:
    """(begin, end, key) of one tensor entry, after checking it describes its bytes."""
    if not isinstance(entry, dict):
        raise fail(f"tensor {key!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEM_BYTES:
        raise fail(f"tensor {key!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_size(s) for s in shape):
        raise fail(f"tensor {key!r}: shape {shape!r} is not a list of sizes >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_size(o) for o in offsets)):
        raise fail(f"tensor {key!r}: data_offsets {offsets!r} are not two offsets >= 0")
    begin, end = offsets
    need = math.prod(shape) * ITEM_BYTES[dtype]
    if end - begin != need:
        raise fail(
            f"tensor {key!r}: data_offsets {offsets} span {end - begin} bytes, "
            f"but {dtype} {shape} needs {need}"
        )
    return begin, end, key


def _size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(spans: list[tuple[int, int, str]], data_bytes: int, fail: Any) -> None:
    """Tensors tile the data section: in bounds, no overlap, no gap."""
    position = 0
    for begin, end, key in spans:
        if end > data_bytes:
            raise fail(
                f"tensor {key!r}: data_offsets end at {end}, past the {data_bytes} data bytes"
            )
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise fail(f"tensor {key!r}: data_offsets start at {begin}, which {what}")
        position = end
    if position != data_bytes:
        raise fail(f"{data_bytes - position} bytes after the last tensor belong to none")


def canonical_header(path: str | os.PathLike[str]) -> None:
    """Rewrite a safetensors file's header in place with its keys sorted.

    The reference writer stores ``__metadata__`` in hash-map order, which
    changes from process to process, so the same tensors and metadata gave
    different bytes in each run. Sorted, the same content is the same file
    (a resumed run's adapter is byte-identical to an uninterrupted run's).
    The header keeps its length (same compact JSON, re-ordered).
    """
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        data = text.encode("utf-8")
        if len(data) <= n:
            f.seek(8)
            f.write(data + b" " * (n - len(data)))


def safe_open_checked(path: str | os.PathLike[str], device: str = "cpu") -> Any:
    """:func:`safetensors.safe_open` (PyTorch tensors) after :func:`check_file`."""
    from safetensors import safe_open

    check_file(path)
    return safe_open(str(path), framework="pt", device=device)


def load_file_checked(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """:func:`safetensors.torch.load_file` after :func:`check_file`."""
    from safetensors.torch import load_file

    check_file(path)
    return load_file(str(path))
