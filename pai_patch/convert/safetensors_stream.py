"""Read and write (sharded) safetensors one tensor, or one row block, at a time.

The ``safetensors`` library memory-maps whole files: every page a conversion touches
stays resident (and counts in RSS) until the file is closed, so peak memory grows to
the checkpoint size.  The format is a JSON header followed by raw little-endian bytes,
so plain positioned reads and appends bound memory by the block being converted.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Entry:
    """Where one tensor's bytes live."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte

    @property
    def row_bytes(self) -> int:
        return _numel(self.shape[1:]) * _itemsize(self.dtype)


class SafetensorsReader:
    """The tensors of an HF checkpoint directory (``model.safetensors`` or an index of shards)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such directory (expected an HF checkpoint with *.safetensors)")
        index = directory / INDEX
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors files (and no {INDEX})")
        self.entries: dict[str, Entry] = {}
        for name in files:
            self.entries.update(_read_header(directory / name))

    def names(self) -> set[str]:
        return set(self.entries)

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor ``name`` (or its rows ``rows``) as a fresh CPU tensor."""
        entry = self.entries[name]
        first, stop = (0, entry.shape[0] if entry.shape else 1) if rows is None else (rows.start, rows.stop)
        shape = entry.shape if rows is None else (stop - first, *entry.shape[1:])
        out = torch.empty(shape, dtype=entry.dtype)
        if out.numel():
            buffer = memoryview(out.view(-1).view(torch.uint8).numpy())
            with open(entry.path, "rb", buffering=0) as handle:
                handle.seek(entry.start + first * entry.row_bytes)
                done = 0
                while done < len(buffer):  # one read() returns at most ~2 GiB on Linux
                    got = handle.readinto(buffer[done:])
                    if not got:
                        raise ValueError(f"{entry.path}: tensor {name} is truncated")
                    done += got
        return out


def _read_header(path: Path) -> dict[str, Entry]:
    """Every tensor's entry, after checking the header describes bytes the file really holds.

    A damaged header would otherwise convert garbage (an entry whose offsets point elsewhere) or fail deep in
    a read; each problem is one line naming the file, the tensor and what was expected.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{path}: header length {length} runs past the end of the file ({size} bytes); the file "
                             "is truncated or not safetensors")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: header is not valid JSON ({getattr(err, 'msg', err)}); the file is damaged") \
                from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is a JSON {type(header).__name__}, expected an object of tensors")
    base = 8 + length
    return {name: _entry(path, name, info, base, size) for name, info in header.items() if name != "__metadata__"}


def _entry(path: Path, name: str, info: object, base: int, size: int) -> Entry:
    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: tensor {name}: {what}")

    if not isinstance(info, dict):
        raise bad(f"expected an object with dtype, shape and data_offsets, got {json.dumps(info)[:40]}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES:
        raise bad(f"unsupported dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {offsets!r} is not [start, end] with 0 <= start <= end")
    nbytes = _numel(shape) * _itemsize(DTYPES[dtype])
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but shape {shape} in {dtype} "
                  f"needs {nbytes}")
    if base + offsets[1] > size:
        raise bad(f"its bytes end at {base + offsets[1]}, past the end of the file ({size} bytes); the file is "
                  "truncated")
    return Entry(path, DTYPES[dtype], tuple(shape), base + offsets[0])


class ShardedSafetensorsWriter:
    """Writes tensors in a fixed, announced order into shards of at most ``max_shard_bytes``.

    Headers need every tensor's offset, so the full list of (name, shape, dtype) is given
    up front; :meth:`write` then appends bytes, possibly in row blocks, in that order.
    """

    def __init__(self, directory: Path, plan: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int) -> None:
        self.directory = directory
        shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            nbytes = _numel(shape) * _itemsize(dtype)
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(shape), dtype))
            size += nbytes
        total = len(shards)
        self.files = [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
        self.order = [(name, shard) for shard, items in enumerate(shards) for name, _, _ in items]
        self.sizes = {name: _numel(shape) * _itemsize(dtype) for items in shards for name, shape, dtype in items}
        self.headers = [_header(items) for items in shards]
        self._position = 0  # index into self.order of the tensor being written
        self._written = 0   # bytes of that tensor written so far
        self._handle = None
        self._shard = -1

    def write(self, name: str, block: torch.Tensor) -> None:
        """Append ``block`` (the whole tensor ``name`` or its next rows)."""
        expected, shard = self.order[self._position]
        if name != expected:
            raise ValueError(f"safetensors writer: got {name}, expected {expected} next")
        if shard != self._shard:
            self._open(shard)
        data = block.detach().contiguous().view(-1).view(torch.uint8).numpy()
        self._handle.write(memoryview(data))
        self._written += data.nbytes
        if self._written > self.sizes[name]:
            raise ValueError(f"safetensors writer: {name} got more bytes than its shape holds")
        if self._written == self.sizes[name]:
            self._position += 1
            self._written = 0

    def _open(self, shard: int) -> None:
        self.close_file()
        self._shard = shard
        self._handle = open(self.directory / self.files[shard], "wb")
        header = self.headers[shard]
        self._handle.write(struct.pack("<Q", len(header)))
        self._handle.write(header)

    def close_file(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        """Close the last shard and write ``model.safetensors.index.json``."""
        if self._position != len(self.order):
            raise ValueError(f"safetensors writer: {self.order[self._position][0]} was never written")
        self.close_file()
        weight_map = {name: self.files[shard] for name, shard in self.order}
        index = {"metadata": {"total_size": sum(self.sizes.values())}, "weight_map": weight_map}
        (self.directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _header(items: list[tuple[str, tuple[int, ...], torch.dtype]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in items:
        nbytes = _numel(shape) * _itemsize(dtype)
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as the library does


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
