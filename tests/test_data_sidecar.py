"""The tokenizer sidecar: preprocessing records which tokenizer made a dataset, megatron-core still
reads the dataset as before, and a sidecar that no longer describes its ``.bin`` is ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pai_patch.data.indexed import IndexedReader
from pai_patch.data.pretrain import preprocess_pretrain
from pai_patch.data.sft import preprocess_sft
from pai_patch.data.sidecar import read_sidecar, sidecar_path, tokenizer_identity
from pai_patch.data.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pai_patch" / "assets" / "corpus"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("shipped")


def test_pretrain_records_the_tokenizer_and_the_data(corpus_prefix, tok):
    record = read_sidecar(corpus_prefix)
    assert record is not None
    assert record.tokenizer == tokenizer_identity(tok)
    assert record.tokenizer.vocab_size == len(tok) == 1018
    assert record.max_token_id == int(IndexedReader.open(corpus_prefix).data.max())
    assert record.bin_bytes == Path(corpus_prefix + ".bin").stat().st_size


def test_megatron_reads_the_dataset_unchanged(corpus_prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ours = IndexedReader.open(corpus_prefix)
    theirs = IndexedDataset(corpus_prefix, multimodal=False, mmap=True)
    assert len(theirs) == len(ours)
    assert np.array_equal(theirs[len(ours) - 1], ours.sequence(len(ours) - 1))


def test_sft_records_the_tokenizer_of_its_token_file(tmp_path, tok):
    preprocess_sft(CORPUS / "sft_train.json", tok, tmp_path / "s", seq_length=64, progress=False)
    record = read_sidecar(tmp_path / "s_text_document")
    assert record is not None and record.tokenizer.fingerprint == tokenizer_identity(tok).fingerprint
    assert not sidecar_path(tmp_path / "s_loss_mask_document").exists()


def test_fingerprint_is_the_id_table_not_the_file_layout(tmp_path, tok):
    """Same ids → same fingerprint (a reload, another name); one more token → another fingerprint."""
    tok.save_pretrained(tmp_path / "copy")
    copy = load_tokenizer(str(tmp_path / "copy"))
    assert tokenizer_identity(copy).fingerprint == tokenizer_identity(tok).fingerprint
    copy.add_tokens(["<extra>"])
    assert tokenizer_identity(copy).fingerprint != tokenizer_identity(tok).fingerprint
    assert tokenizer_identity(copy).vocab_size == 1019


def test_a_rewritten_bin_makes_the_old_sidecar_stale(tmp_path, tok):
    rows = [{"text": "one fish two fish"}, {"text": "red fish blue fish"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preprocess_pretrain(str(tmp_path / "a.jsonl"), tok, tmp_path / "a", progress=False)
    prefix = tmp_path / "a_text_document"
    assert read_sidecar(prefix) is not None
    Path(f"{prefix}.bin").write_bytes(Path(f"{prefix}.bin").read_bytes() + b"\x00\x00")
    assert read_sidecar(prefix) is None
    sidecar_path(prefix).write_text("{not json")
    with pytest.raises(ValueError, match=r"a_text_document\.tokenizer\.json: unreadable tokenizer sidecar"):
        read_sidecar(prefix)


def test_failed_rerun_leaves_no_sidecar_describing_other_data(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text('{"text": "one fish"}\n')
    preprocess_pretrain(str(tmp_path / "a.jsonl"), tok, tmp_path / "a", progress=False)
    (tmp_path / "b.jsonl").write_text('{"text": "two fish"}\n{bad json\n')
    with pytest.raises(ValueError):
        preprocess_pretrain(str(tmp_path / "b.jsonl"), tok, tmp_path / "a", progress=False)
    assert not sidecar_path(tmp_path / "a_text_document").exists()
    assert Path(tmp_path / "a_text_document.bin").exists()  # the old data stays, checked by scanning
