"""``data inspect`` / ``data validate``: header and statistics, and the first inconsistency of a damaged idxmap."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pai_patch.cli import main
from pai_patch.data.indexed import HEADER_SIZE, IndexedWriter
from pai_patch.data.inspect_cli import first_inconsistency


@pytest.fixture
def prefix(tmp_path):
    writer = IndexedWriter(tmp_path / "d.bin", np.uint16)
    for doc in ([5, 6, 7, 0], [8, 9, 0], [10, 0]):
        writer.add_document(np.array(doc), [len(doc)])
    writer.finalize(tmp_path / "d.idx")
    return tmp_path / "d"


def _patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_valid_dataset(prefix, capsys):
    assert first_inconsistency(str(prefix)) is None
    assert main(["data", "validate", f"{prefix}.idx"]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_inspect_prints_header_stats_and_sample(prefix, capsys):
    assert main(["data", "inspect", str(prefix), "--tokenizer", "shipped", "--document", "1"]) == 0
    out = capsys.readouterr().out
    assert "version 1, dtype uint16 (code 8), 3 sequences, 3 documents" in out
    assert "9 total" in out and "min 2" in out and "max 4" in out
    assert "document 1 (3 tokens)" in out
    assert "tokenizer: unknown; sidecar none (made by another tool)" in out


def test_inspect_names_the_tokenizer_from_the_sidecar(prefix, capsys):
    from pai_patch.data.sidecar import tokenizer_identity, write_sidecar
    from pai_patch.data.tokenizer import load_tokenizer

    identity = tokenizer_identity(load_tokenizer("shipped"), "shipped")
    write_sidecar(prefix, identity, max_token_id=10)
    assert main(["data", "inspect", str(prefix)]) == 0
    assert f"tokenizer: shipped ({identity.vocab_size} ids, fingerprint {identity.fingerprint[:12]})" in \
        capsys.readouterr().out
    prefix.with_suffix(".bin").write_bytes(prefix.with_suffix(".bin").read_bytes() + b"\0\0")  # data replaced
    main(["data", "inspect", str(prefix)])
    assert "tokenizer: unknown; sidecar stale: describes another .bin" in capsys.readouterr().out


def test_truncated_bin(prefix, capsys):
    bin_file = prefix.with_suffix(".bin")
    bin_file.write_bytes(bin_file.read_bytes()[:-2])
    assert "d.bin: 16 bytes, but the index describes 18 bytes (truncated)" in first_inconsistency(str(prefix))
    assert main(["data", "validate", str(prefix)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_wrong_magic(prefix):
    _patch(prefix.with_suffix(".idx"), 0, b"NOTANIDX\x00")
    assert "wrong magic" in first_inconsistency(str(prefix))


def test_non_monotone_document_index(prefix):
    n_seq = 3
    docs_offset = HEADER_SIZE + 12 * n_seq
    _patch(prefix.with_suffix(".idx"), docs_offset + 8, struct.pack("<qq", 2, 1))  # [0, 2, 1, 3]
    assert first_inconsistency(str(prefix)).endswith("document index not monotone at document 1: 2 then 1")


def test_pointer_disagreeing_with_lengths(prefix):
    _patch(prefix.with_suffix(".idx"), HEADER_SIZE + 12 + 8 * 2, struct.pack("<q", 7))
    assert "sequence 2 pointer 7 does not follow" in first_inconsistency(str(prefix))


def test_truncated_idx_and_missing_files(prefix, tmp_path):
    idx = prefix.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:-8])
    assert "need" in first_inconsistency(str(prefix))
    idx.write_bytes(idx.read_bytes()[:10])
    assert "shorter than" in first_inconsistency(str(prefix))
    assert "no such index file" in first_inconsistency(str(tmp_path / "none"))
