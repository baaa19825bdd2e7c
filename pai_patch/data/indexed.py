"""The Megatron idxmap format (``PREFIX.bin`` + ``PREFIX.idx``), written and read without megatron-core.

The writer produces exactly the bytes of ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder``
(tested), but accepts whole batches of documents as numpy arrays and writes through a large
buffer: the per-document Python work of the original builder is what makes it slow.  The reader is
a plain memmap that tolerates damaged files, so ``data validate`` can name what is wrong
instead of crashing inside megatron-core.

Layout of ``.idx`` (little endian): magic ``MMIDIDX\\0\\0``, version u64 (=1), dtype code u8,
sequence count u64, document count u64 (= documents + 1), then int32 sequence lengths, int64
byte pointers into ``.bin``, int64 document indices (sequence index where each document ends,
starting with 0).
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pai_patch.utils import atomic_path

MAGIC = b"MMIDIDX\x00\x00"
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8
# Same codes as megatron.core.datasets.indexed_dataset.DType.
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
WRITE_BUFFER = 16 << 20


def optimal_dtype(vocab_size: int) -> type[np.number]:
    """megatron-core's ``DType.optimal_dtype``: uint16 below 65500 ids, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def dataset_prefix(path: str) -> str:
    """The idxmap prefix of a dataset named by its prefix, its ``.bin`` or its ``.idx``."""
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.idx")


class IndexedWriter:
    """Append documents to a ``.bin`` stream and keep the index in numpy chunks until ``finalize``.

    ``add_documents(tokens, sequence_lengths, sequences_per_document)`` adds many documents at
    once: ``tokens`` is their concatenation, ``sequence_lengths`` the length of each sequence and
    ``sequences_per_document`` how many sequences each document holds (all ones for pretraining
    without sentence splitting).
    """

    def __init__(self, bin_file: str | os.PathLike, dtype: type[np.number]) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} is not an idxmap dtype; valid: {sorted(map(str, CODE_OF))}")
        self._bin = open(bin_file, "wb", buffering=WRITE_BUFFER)
        self._lengths: list[np.ndarray] = []
        self._doc_ends: list[np.ndarray] = []
        self._sequences = 0
        self.tokens = 0

    def add_documents(self, tokens: np.ndarray, sequence_lengths: np.ndarray,
                      sequences_per_document: np.ndarray | None = None) -> None:
        lengths = np.asarray(sequence_lengths, dtype=np.int32)
        if int(lengths.sum(dtype=np.int64)) != len(tokens):
            raise ValueError(f"sequence lengths sum to {int(lengths.sum())} but {len(tokens)} tokens were given")
        per_doc = np.ones(len(lengths), np.int64) if sequences_per_document is None else np.asarray(sequences_per_document, np.int64)
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(lengths)
        self._doc_ends.append(self._sequences + np.cumsum(per_doc))
        self._sequences += len(lengths)
        self.tokens += len(tokens)

    def add_document(self, tokens: np.ndarray, lengths: list[int] | np.ndarray) -> None:
        """One document made of ``len(lengths)`` sequences (the builder's ``add_document``)."""
        self.add_documents(np.asarray(tokens), np.asarray(lengths), np.array([len(lengths)]))

    def finalize(self, idx_file: str | os.PathLike) -> None:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        doc_index = np.concatenate([np.zeros(1, np.int64), *self._doc_ends])
        pointers = np.zeros(len(lengths), np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(idx_file, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", CODE_OF[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(doc_index)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_index.tobytes())

    def close(self) -> None:
        self._bin.close()


@contextlib.contextmanager
def atomic_writers(specs: dict[str, tuple[str | os.PathLike, type[np.number]]]) -> Iterator[dict[str, IndexedWriter]]:
    """Open one ``IndexedWriter`` per ``name -> (prefix, dtype)``; publish all only if the block succeeds.

    Files are written under temporary names; on success every ``.bin`` is renamed into place
    before any ``.idx``, so a reader (which needs both) never sees a new index over old data.
    """
    with contextlib.ExitStack() as stack:
        idx_tmp = {name: stack.enter_context(atomic_path(idx_path(prefix))) for name, (prefix, _) in specs.items()}
        bin_tmp = {name: stack.enter_context(atomic_path(bin_path(prefix))) for name, (prefix, _) in specs.items()}
        writers = {name: IndexedWriter(bin_tmp[name], dtype) for name, (_, dtype) in specs.items()}
        try:
            yield writers
        except BaseException:
            for writer in writers.values():
                writer.close()
            raise
        for name, writer in writers.items():
            writer.finalize(idx_tmp[name])


@dataclass
class IndexedReader:
    """Read-only view of an idxmap: header fields and memmapped arrays (no megatron-core import)."""

    prefix: str
    version: int
    dtype: np.dtype
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray
    data: np.ndarray

    @classmethod
    def open(cls, prefix: str | os.PathLike) -> "IndexedReader":
        """Parse the header strictly; raise ``ValueError`` naming the file and the first bad field."""
        header = read_header(prefix)
        path = idx_path(prefix)
        raw = np.memmap(path, mode="r", dtype=np.uint8)
        n_seq, n_doc = header["sequence_count"], header["document_count"]
        need = HEADER_SIZE + n_seq * 4 + n_seq * 8 + n_doc * 8
        if len(raw) < need:
            raise ValueError(f"{path}: {len(raw)} bytes, but the header's {n_seq} sequences and {n_doc} document "
                             f"indices need {need}")
        lengths = np.frombuffer(raw, np.int32, n_seq, HEADER_SIZE)
        pointers = np.frombuffer(raw, np.int64, n_seq, HEADER_SIZE + 4 * n_seq)
        docs = np.frombuffer(raw, np.int64, n_doc, HEADER_SIZE + 12 * n_seq)
        data_path = bin_path(prefix)
        if not data_path.exists():
            raise FileNotFoundError(f"{data_path}: missing (the .idx has no data file next to it)")
        size = data_path.stat().st_size
        data = np.memmap(data_path, mode="r", dtype=header["dtype"]) if size >= header["dtype"].itemsize else np.zeros(0, header["dtype"])
        return cls(str(prefix), header["version"], header["dtype"], lengths, pointers, docs, data)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def sequence(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        return self.data[start:start + int(self.sequence_lengths[i])]

    def document(self, d: int) -> list[np.ndarray]:
        """The sequences of document ``d`` (one for pretraining data; the packed samples for SFT)."""
        return [self.sequence(i) for i in range(int(self.document_indices[d]), int(self.document_indices[d + 1]))]

    @property
    def num_documents(self) -> int:
        return max(len(self.document_indices) - 1, 0)


def read_header(prefix: str | os.PathLike) -> dict:
    path = idx_path(prefix)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such index file")
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE:
        raise ValueError(f"{path}: {len(head)} bytes, shorter than the {HEADER_SIZE}-byte idxmap header")
    if head[:9] != MAGIC:
        raise ValueError(f"{path}: wrong magic {head[:9]!r}, expected {MAGIC!r} (not a Megatron idxmap index)")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise ValueError(f"{path}: version {version}, expected 1")
    if code not in DTYPE_CODES:
        raise ValueError(f"{path}: dtype code {code} unknown, expected one of {sorted(DTYPE_CODES)}")
    return {"magic": head[:9], "version": version, "dtype_code": code, "dtype": np.dtype(DTYPE_CODES[code]),
            "sequence_count": n_seq, "document_count": n_doc}
