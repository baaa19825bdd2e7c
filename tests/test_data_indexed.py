"""The idxmap writer is byte-identical to megatron-core's IndexedDatasetBuilder and reads back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pai_patch.data.indexed import IndexedReader, IndexedWriter, atomic_writers, optimal_dtype
from pai_patch.data.pretrain import preprocess_pretrain
from pai_patch.data.tokenizer import load_tokenizer

indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("shipped")


def _megatron(tmp_path, docs, dtype, name="ref"):
    builder = indexed_dataset.IndexedDatasetBuilder(str(tmp_path / f"{name}.bin"), dtype=dtype)
    for doc in docs:
        builder.add_document(np.concatenate(doc) if doc else np.zeros(0, dtype), [len(s) for s in doc])
    builder.finalize(str(tmp_path / f"{name}.idx"))
    return (tmp_path / f"{name}.bin").read_bytes(), (tmp_path / f"{name}.idx").read_bytes()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_writer_bytes_equal_megatron_builder(tmp_path, dtype):
    rng = np.random.default_rng(0)
    # Documents of 1..3 sequences, including a one-token sequence.
    docs = [[rng.integers(0, 60000, rng.integers(1, 50)) for _ in range(rng.integers(1, 4))] for _ in range(40)]
    writer = IndexedWriter(tmp_path / "ours.bin", dtype)
    for doc in docs[:10]:
        writer.add_document(np.concatenate(doc), [len(s) for s in doc])
    # The rest as one batch, the way preprocess_pretrain adds chunks.
    rest = docs[10:]
    writer.add_documents(np.concatenate([np.concatenate(d) for d in rest]),
                         np.array([len(s) for d in rest for s in d]), np.array([len(d) for d in rest]))
    writer.finalize(tmp_path / "ours.idx")
    ref_bin, ref_idx = _megatron(tmp_path, docs, dtype)
    assert (tmp_path / "ours.bin").read_bytes() == ref_bin
    assert (tmp_path / "ours.idx").read_bytes() == ref_idx


def test_empty_dataset_matches_megatron(tmp_path):
    writer = IndexedWriter(tmp_path / "ours.bin", np.uint16)
    writer.finalize(tmp_path / "ours.idx")
    assert (tmp_path / "ours.idx").read_bytes() == _megatron(tmp_path, [], np.uint16)[1]


def test_optimal_dtype_like_megatron():
    for vocab in (1018, 32000, 65499, 65500, 151936):
        assert optimal_dtype(vocab) is indexed_dataset.DType.optimal_dtype(vocab)


def test_atomic_writers_leave_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_writers({"t": (tmp_path / "p", np.uint16)}) as writers:
            writers["t"].add_document(np.arange(5), [5])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_pretrain_output_equals_megatron_loop_and_reads_back(tmp_path, tok):
    texts = ["hello world", "The capital of France is Paris.", "西班牙的首都是马德里。", "  spaces  and\nnewlines\t"]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    summary = preprocess_pretrain(src, tok, tmp_path / "out", append_eod=True, progress=False)
    assert (summary.documents, summary.skipped) == (4, {})
    docs = [[np.array(tok(t)["input_ids"] + [tok.eos_token_id])] for t in texts]
    ref_bin, ref_idx = _megatron(tmp_path, docs, np.uint16)
    assert (tmp_path / "out_text_document.bin").read_bytes() == ref_bin
    assert (tmp_path / "out_text_document.idx").read_bytes() == ref_idx
    ds = indexed_dataset.IndexedDataset(str(tmp_path / "out_text_document"))
    assert [ds[i].tolist() for i in range(len(ds))] == [d[0].tolist() for d in docs]


documents = st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=documents, append_eod=st.booleans())
def test_property_random_documents_round_trip(tmp_path_factory, tok, docs, append_eod):
    """Read-back tokens equal ``tokenizer.encode`` (+ EOD) for arbitrary unicode documents."""
    tmp = tmp_path_factory.mktemp("prop")
    src = tmp / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    preprocess_pretrain(src, tok, tmp / "o", append_eod=append_eod, progress=False)
    ds = IndexedReader.open(tmp / "o_text_document")
    expected = [tok.encode(d) + ([tok.eos_token_id] if append_eod else []) for d in docs]
    assert [ds.sequence(i).tolist() for i in range(len(ds))] == expected
    assert ds.document_indices.tolist() == list(range(len(docs) + 1))
