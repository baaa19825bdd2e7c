"""Tokenizer / data / model vocabulary mismatches stop training before the model is built, with one
line naming the file, the numbers and the fix; matching setups pass untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from pai_patch.data.indexed import IndexedWriter
from pai_patch.data.sft import preprocess_sft
from pai_patch.data.sidecar import sidecar_path, tokenizer_identity
from pai_patch.data.tokenizer import load_tokenizer
from pai_patch.models import get_family
from pai_patch.training import vocab_check
from pai_patch.training.config import TrainConfig
from pai_patch.training.vocab_check import VocabularyError, check_vocabulary, largest_token_id

ROOT = Path(__file__).resolve().parents[1]
TINY = get_family("qwen2_5").size("tiny")  # vocab_size 2048


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("shipped")


def _tokenizer_with(tmp_path: Path, tok, extra: int) -> str:
    """The shipped tokenizer plus ``extra`` added tokens, saved as a directory."""
    tok.save_pretrained(tmp_path / f"tok{extra}")
    grown = load_tokenizer(str(tmp_path / f"tok{extra}"))
    grown.add_tokens([f"<extra{i}>" for i in range(extra)])
    grown.save_pretrained(tmp_path / f"tok{extra}")
    return str(tmp_path / f"tok{extra}")


def _cfg(train_path: str | None, tokenizer: str = "shipped", **data) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.train_path, cfg.data.tokenizer = train_path, tokenizer
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _check(cfg: TrainConfig) -> None:
    check_vocabulary(cfg, TINY, load_tokenizer(cfg.tokenizer_dir()))


def _megatron_tool_dataset(tmp_path: Path, ids: list[int]) -> str:
    """A dataset as Megatron-LM's preprocess_data.py leaves it: .bin/.idx, no sidecar."""
    prefix = str(tmp_path / "mlm_text_document")
    writer = IndexedWriter(prefix + ".bin", np.uint16)
    writer.add_document(np.array(ids, np.uint16), [len(ids)])
    writer.finalize(prefix + ".idx")
    return prefix


def test_matching_tokenizer_data_and_model_pass(corpus_prefix, tmp_path):
    _check(_cfg(corpus_prefix))
    _check(_cfg(corpus_prefix + ".bin"))  # named by its .bin
    _check(_cfg(_megatron_tool_dataset(tmp_path, [5, 1017, 9])))  # no sidecar, ids in range


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, tok, corpus_prefix):
    big = _tokenizer_with(tmp_path, tok, 1100)  # 2118 ids, tiny's embedding has 2048 rows
    with pytest.raises(VocabularyError) as err:
        _check(_cfg(corpus_prefix, big))
    assert str(err.value).startswith(f"data.tokenizer: {big} (2118 ids, fingerprint ")
    assert "more ids than model qwen2_5 tiny has embedding rows (2048: vocab_size 2048 padded" in str(err.value)


def test_sidecar_of_another_tokenizer(tmp_path, tok, corpus_prefix):
    other = _tokenizer_with(tmp_path, tok, 1)  # same size class, one id more: another id table
    with pytest.raises(VocabularyError) as err:
        _check(_cfg(corpus_prefix, other))
    text = str(err.value)
    assert text.startswith(f"data.train_path: {corpus_prefix} was tokenized with ")
    assert f"(1018 ids, fingerprint {tokenizer_identity(tok).fingerprint[:12]}) ({sidecar_path(corpus_prefix)})" in text
    assert f"but data.tokenizer is {other} (1019 ids, fingerprint {tokenizer_identity(load_tokenizer(other)).fingerprint[:12]})" in text


def test_dataset_without_sidecar_holding_ids_beyond_the_tokenizer(tmp_path, tok):
    prefix = _megatron_tool_dataset(tmp_path, [3, 1500, 7])
    with pytest.raises(VocabularyError) as err:
        _check(_cfg(prefix))
    assert str(err.value) == (f"data.train_path: {prefix}.bin holds token id 1500, but data.tokenizer shipped "
                              f"(1018 ids, fingerprint {tokenizer_identity(tok).fingerprint[:12]}) has ids "
                              "0..1017 only; the data was tokenized with another tokenizer")


def test_valid_path_and_sft_token_files_are_checked(tmp_path, tok, corpus_prefix):
    other = _tokenizer_with(tmp_path, tok, 1)
    preprocess_sft(ROOT / "pai_patch/assets/corpus/sft_train.json", load_tokenizer(other), tmp_path / "s",
                   seq_length=64, progress=False)
    with pytest.raises(VocabularyError, match=r"^data\.train_path: .*s_text_document was tokenized with"):
        _check(_cfg(str(tmp_path / "s"), sft=True))
    with pytest.raises(VocabularyError, match=r"^data\.valid_path: .*mlm_text_document\.bin holds token id 2000"):
        _check(_cfg(corpus_prefix, valid_path=_megatron_tool_dataset(tmp_path, [2000])))
    _check(_cfg(str(tmp_path / "s"), other, sft=True))


def test_raw_json_and_missing_data_are_left_to_their_own_checks(tmp_path):
    _check(_cfg(str(ROOT / "pai_patch/assets/corpus/sft_train.json"), sft=True, type="raw"))
    _check(_cfg(str(tmp_path / "nodata_text_document")))  # the builder names the missing file


def test_large_bin_is_sampled_within_the_budget(monkeypatch):
    data = np.zeros(1000, np.uint16)
    data[999] = 900
    monkeypatch.setattr(vocab_check, "SCAN_CHUNK", 100)
    assert largest_token_id(data) == (900, True)
    assert largest_token_id(data, budget_bytes=400) == (900, False)  # first and last chunk among the two read
    assert largest_token_id(np.zeros(0, np.uint16)) == (-1, True)


@pytest.mark.slow
def test_train_stops_before_building_the_model(tmp_path, tok, corpus_prefix):
    other = _tokenizer_with(tmp_path, tok, 1)
    out = tmp_path / "run"
    result = run_cli("train", "model.family=qwen2_5", "model.size=tiny", "train.train_iters=2",
                     f"data.train_path={corpus_prefix}", f"data.tokenizer={other}", f"output_dir={out}", check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines[-1].startswith(f"error: data.train_path: {corpus_prefix} was tokenized with "), lines[-1]
    assert "Traceback" not in result.stderr
    assert not (out / "checkpoint").exists() and not (out / "metrics.jsonl").exists()
