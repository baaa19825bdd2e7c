"""``python -m pai_patch data inspect|validate PREFIX``: look inside an idxmap, or prove it is consistent.

``validate`` checks, in order, and stops at the first inconsistency it names: the header
(magic, version, dtype), that the ``.idx`` is long enough for its counts, that the document
index starts at 0, is monotone and ends at the sequence count, that lengths are non-negative,
that each pointer is the previous pointer plus the previous length, and that the ``.bin`` size is
exactly the sum of the lengths.
"""

from __future__ import annotations

import argparse

import numpy as np

from pai_patch.cli import CliError
from pai_patch.data.indexed import HEADER_SIZE, IndexedReader, bin_path, dataset_prefix, idx_path, read_header


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="inspect|validate")
    ins = sub.add_parser("inspect", help="header, token statistics and (with --tokenizer) a decoded sample")
    ins.add_argument("prefix", help="dataset prefix (PREFIX.bin / PREFIX.idx; a trailing .bin/.idx is ignored)")
    ins.add_argument("--tokenizer", help="tokenizer directory or name, to decode a sample")
    ins.add_argument("--tokenizer-dir", default=None)
    ins.add_argument("--document", "--sample", dest="document", type=int, default=0, metavar="INDEX",
                     help="index of the document to decode (0-based; --sample is the old name)")
    val = sub.add_parser("validate", help="check header, pointers, lengths vs .bin size, monotone document index")
    val.add_argument("prefix")


def first_inconsistency(prefix: str) -> str | None:
    """The first problem found in the idxmap at ``prefix``, or ``None`` when it is consistent."""
    try:
        ds = IndexedReader.open(prefix)
    except (ValueError, FileNotFoundError) as err:
        return str(err)
    idx = f"{prefix}.idx"
    docs, lengths, pointers = ds.document_indices, ds.sequence_lengths, ds.sequence_pointers
    if len(docs) == 0 or docs[0] != 0:
        return f"{idx}: document index must start with 0, found {docs[:1].tolist()}"
    steps = np.diff(docs)
    if (steps < 0).any():
        d = int(np.argmax(steps < 0))
        return f"{idx}: document index not monotone at document {d}: {int(docs[d])} then {int(docs[d + 1])}"
    if docs[-1] != len(lengths):
        return f"{idx}: document index ends at {int(docs[-1])}, expected the sequence count {len(lengths)}"
    if (lengths < 0).any():
        i = int(np.argmax(lengths < 0))
        return f"{idx}: sequence {i} has negative length {int(lengths[i])}"
    expected = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * ds.dtype.itemsize, out=expected[1:])
    bad = pointers != expected
    if bad.any():
        i = int(np.argmax(bad))
        return f"{idx}: sequence {i} pointer {int(pointers[i])} does not follow the previous sequence, expected {int(expected[i])}"
    need = int(lengths.astype(np.int64).sum()) * ds.dtype.itemsize
    size = bin_path(prefix).stat().st_size
    if size != need:
        return (f"{bin_path(prefix)}: {size} bytes, but the index describes {need} bytes "
                f"({'truncated' if size < need else 'trailing data'})")
    extra = idx_path(prefix).stat().st_size - (HEADER_SIZE + 12 * len(lengths) + 8 * len(docs))
    if extra not in (0, len(lengths)):  # a multimodal index carries one int8 mode per sequence
        return f"{idx}: {extra} unexpected bytes after the document index"
    return None


def _inspect(args: argparse.Namespace, prefix: str) -> int:
    header = read_header(prefix)
    ds = IndexedReader.open(prefix)
    lengths = ds.sequence_lengths.astype(np.int64)
    print(f"{prefix}.idx: magic {header['magic']!r}, version {header['version']}, dtype {header['dtype']} "
          f"(code {header['dtype_code']}), {header['sequence_count']} sequences, {ds.num_documents} documents "
          f"({header['document_count']} document-index entries)")
    if len(lengths):
        data = ds.data[: int(lengths.sum())]
        print(f"tokens: {int(lengths.sum())} total; sequence length min {lengths.min()}, mean {lengths.mean():.1f}, "
              f"median {int(np.median(lengths))}, max {lengths.max()}; token ids {int(data.min())}..{int(data.max())}")
    print(_tokenizer_line(prefix))
    if args.tokenizer and ds.num_documents:
        from pai_patch.data.tokenizer import load_tokenizer

        if not 0 <= args.document < ds.num_documents:
            raise CliError(f"--document {args.document}: expected an index 0..{ds.num_documents - 1}")
        tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_dir)
        ids = np.concatenate(ds.document(args.document)).tolist()
        print(f"document {args.document} ({len(ids)} tokens): {tokenizer.decode(ids)!r}")
    return 0


def _tokenizer_line(prefix: str) -> str:
    """Which tokenizer made the data, from its sidecar (``pai_patch.data.sidecar``)."""
    from pai_patch.data.sidecar import read_sidecar, sidecar_path

    record = read_sidecar(prefix)
    if record is None:
        state = "stale: describes another .bin" if sidecar_path(prefix).is_file() else "none (made by another tool)"
        return f"tokenizer: unknown; sidecar {state}"
    return f"tokenizer: {record.tokenizer.describe()}, from {sidecar_path(prefix)}"


def run(args: argparse.Namespace) -> int:
    prefix = dataset_prefix(args.prefix)
    if args.action == "inspect":
        return _inspect(args, prefix)
    problem = first_inconsistency(prefix)
    if problem:
        print(f"INVALID {problem}")
        return 1
    header = read_header(prefix)
    print(f"OK {prefix}: {header['sequence_count']} sequences, {header['document_count'] - 1} documents, dtype {header['dtype']}")
    return 0
