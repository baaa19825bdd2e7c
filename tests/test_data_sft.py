"""SFT: loss-mask rules, formats, packing, uint16 with a 32k+ vocabulary, and raw == preprocessed batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pai_patch.cli import main
from pai_patch.data.indexed import IndexedReader
from pai_patch.data.records import BadRecord
from pai_patch.data.sft import build_sft_dataset, pack_groups, preprocess_sft
from pai_patch.data.sft_format import SftEncoder, to_messages
from pai_patch.data.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SFT_TRAIN = ROOT / "pai_patch" / "assets" / "corpus" / "sft_train.json"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("shipped")


@pytest.fixture(scope="module")
def big_tok():
    """A word-level tokenizer with 40000 ids and no chat template: ids above int16, below uint16's limit."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, 40000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def _write(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return path


def test_alpaca_loss_mask_covers_response_and_eos_only(tok):
    enc = SftEncoder(tok)
    messages = to_messages({"instruction": "What is 1 plus 2?", "input": "", "output": "3"}, "alpaca", "f", 1)
    tokens, mask = enc.encode(messages)
    assert tok.decode(tokens[mask == 1]) == "3<|im_end|><|endoftext|>"
    assert tokens[-1] == tok.eos_token_id and mask[-1] == 1
    assert tok.decode(tokens[mask == 0]).startswith("<|im_start|>user\nWhat is 1 plus 2?")
    # The prompt decodes exactly as the chat template renders it with a generation prompt.
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(tokens[: int(np.argmax(mask))]) == prompt


def test_formats_agree(tok):
    enc = SftEncoder(tok)
    alpaca = to_messages({"instruction": "Hi", "input": "there", "output": "Hello", "system": "Be brief."}, "alpaca", "f", 1)
    share = to_messages({"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi\nthere"},
                                                                  {"from": "gpt", "value": "Hello"}]}, "sharegpt", "f", 1)
    msgs = to_messages({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                                     {"role": "assistant", "content": "Hello"}]}, "messages", "f", 1)
    assert alpaca == share == msgs
    a, b = enc.encode(alpaca), enc.encode(msgs)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_multi_turn_masks_every_assistant_turn(tok):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    tokens, mask = SftEncoder(tok).encode(messages)
    assert tok.decode(tokens[mask == 1]) == "b<|im_end|>d<|im_end|><|endoftext|>"


def test_fallback_template_when_tokenizer_has_none(big_tok):
    enc = SftEncoder(big_tok)
    assert enc.template_name == "fallback"
    tokens, mask = enc.encode(to_messages({"instruction": "w5 w6", "output": "w39999 w7"}, "alpaca", "f", 1))
    assert tokens[mask == 1].tolist() == [39999, 7, 0]  # response and the EOS the template ends it with
    assert enc.segments(to_messages({"instruction": "w5", "output": "w6"}, "alpaca", "f", 1)) == [
        ("### Instruction:\nw5\n\n### Response:\n", False), ("w6<eos>", True)]


@pytest.mark.parametrize("record,reason", [
    ({"instruction": "q"}, "missing key"),
    ({"instruction": "q", "output": 5}, "non-string value"),
    ({"instruction": "q", "output": "  "}, "empty response"),
    ("just a string", "not an object"),
])
def test_bad_alpaca_records(tmp_path, tok, record, reason):
    src = _write(tmp_path / "d.json", [{"instruction": "a", "output": "b"}, record])
    with pytest.raises(BadRecord) as err:
        preprocess_sft(src, tok, tmp_path / "o", seq_length=32, progress=False)
    assert err.value.reason == reason and err.value.line == 6 and str(err.value).startswith(f"{src}:6:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]
    with pytest.raises(ValueError, match=r"skipped 1 of 2 records \(50\.0%"):
        preprocess_sft(src, tok, tmp_path / "o", seq_length=32, skip_bad_lines=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]
    summary = preprocess_sft(src, tok, tmp_path / "o", seq_length=32, skip_bad_lines=True, progress=False,
                             max_bad_fraction=0.5)
    assert summary.samples == 1 and summary.skipped == {reason: 1}


def test_text_the_tokenizer_refuses_names_file_line_and_key(tmp_path, tok):
    src = tmp_path / "d.jsonl"
    src.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "scraped \\ud800"}\n')
    with pytest.raises(BadRecord, match=rf"{src}:2: invalid text: 'output' holds a lone surrogate '\\ud800'"):
        preprocess_sft(src, tok, tmp_path / "o", seq_length=32, progress=False)
    summary = preprocess_sft(src, tok, tmp_path / "o", seq_length=32, skip_bad_lines=True, progress=False,
                             max_bad_fraction=0.5)
    assert summary.samples == 1 and summary.skipped == {"invalid text": 1}


def test_bom_json_array_is_read_as_an_array(tmp_path, tok):
    src = tmp_path / "d.json"
    src.write_bytes(b"\xef\xbb\xbf\n" + json.dumps([{"instruction": "a", "output": "b"}] * 5, indent=1).encode())
    summary = preprocess_sft(src, tok, tmp_path / "o", seq_length=32, skip_bad_lines=True, progress=False)
    assert summary.samples == 5 and summary.skipped == {}


def test_bad_conversations(tok):
    with pytest.raises(BadRecord, match="bad conversation"):
        to_messages({"messages": [{"role": "user", "content": "a"}]}, "messages", "f", 3)
    with pytest.raises(BadRecord, match="bad conversation"):
        to_messages({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}, "sharegpt", "f", 3)
    with pytest.raises(BadRecord, match="missing key"):
        to_messages({"messages": []}, "messages", "f", 3)


def test_uint16_storage_with_large_vocab(tmp_path, big_tok):
    rows = [{"instruction": "w1 w2 w3", "output": "w39998 w32768 w65"}, {"instruction": "w40", "output": "w32767"}]
    summary = preprocess_sft(_write(tmp_path / "d.json", rows), big_tok, tmp_path / "o", seq_length=16, progress=False)
    ds = IndexedReader.open(tmp_path / "o_text_document")
    assert ds.dtype == np.uint16
    assert IndexedReader.open(tmp_path / "o_loss_mask_document").dtype == np.uint8
    assert 39998 in ds.sequence(0).tolist() and 32768 in ds.sequence(0).tolist()
    assert summary.loss_tokens == 4 + 2
    item = build_sft_dataset(str(tmp_path / "o"), big_tok, 16)[0]
    assert item["labels"][item["loss_mask"] > 0].tolist() == [39998, 32768, 65, 0]
    raw = build_sft_dataset(str(tmp_path / "d.json"), big_tok, 16, raw=True)[0]
    assert all(torch.equal(item[k], raw[k]) for k in item)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(DataLoader(a, batch_size=4), DataLoader(b, batch_size=4)):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("pack", [False, True])
def test_raw_and_preprocessed_give_identical_batches(tmp_path, tok, pack):
    seq = 48
    summary = preprocess_sft(SFT_TRAIN, tok, tmp_path / "sft", seq_length=seq, pack=pack, progress=False)
    stored = build_sft_dataset(str(tmp_path / "sft"), tok, seq, pack=pack)
    raw = build_sft_dataset(str(SFT_TRAIN), tok, seq, raw=True, pack=pack)
    assert len(stored) == summary.sequences
    _assert_same(stored, raw)
    if pack:
        # The same data packed on the fly from an unpacked idxmap, too.
        preprocess_sft(SFT_TRAIN, tok, tmp_path / "flat", seq_length=seq, progress=False)
        _assert_same(build_sft_dataset(str(tmp_path / "flat_text_document"), tok, seq, pack=True), raw)


def test_item_layout_and_packing_invariants(tmp_path, tok):
    seq = 64
    preprocess_sft(SFT_TRAIN, tok, tmp_path / "p", seq_length=seq, pack=True, progress=False)
    ds = build_sft_dataset(str(tmp_path / "p"), tok, seq, pack=True)
    for i in range(0, len(ds), 97):
        item = ds[i]
        assert {k: (v.dtype, tuple(v.shape)) for k, v in item.items()} == {
            "tokens": (torch.int64, (seq,)), "labels": (torch.int64, (seq,)), "loss_mask": (torch.float32, (seq,)),
            "position_ids": (torch.int64, (seq,)), "cu_seqlens": (torch.int32, (seq + 1,))}
        cu = item["cu_seqlens"]
        used = int(cu[-1])
        assert cu[0] == 0 and (cu[1:] >= cu[:-1]).all() and used <= seq
        bounds = sorted(set(cu.tolist()))
        for start, end in zip(bounds, bounds[1:]):
            assert item["position_ids"][start:end].tolist() == list(range(end - start))
            assert item["tokens"][start + 1:end].tolist() == item["labels"][start:end - 1].tolist()
            assert item["labels"][end - 1] == tok.eos_token_id and item["loss_mask"][end - 1] == 1
        assert item["loss_mask"][used:].sum() == 0
    unpacked = build_sft_dataset(str(tmp_path / "p"), tok, seq)[0]
    assert "cu_seqlens" not in unpacked and unpacked["position_ids"].tolist() == list(range(seq))


def test_truncation_and_seq_length_checks(tmp_path, tok):
    rows = [{"instruction": "tell me a long story " * 20, "output": "ok"}]
    summary = preprocess_sft(_write(tmp_path / "d.json", rows), tok, tmp_path / "o", seq_length=16, progress=False)
    assert summary.truncated == 1
    item = build_sft_dataset(str(tmp_path / "o"), tok, 16)[0]
    assert item["loss_mask"].sum() == 0  # the response was cut off
    with pytest.raises(ValueError, match="--seq-length 16"):
        build_sft_dataset(str(tmp_path / "o"), tok, 32)
    with pytest.raises(FileNotFoundError, match="_sft.json"):
        build_sft_dataset(str(tmp_path / "nothing"), tok, 16)


def test_pack_groups_fit_and_cover():
    lengths = np.random.default_rng(0).integers(2, 30, 500)
    groups = pack_groups(lengths, 40, seed=7)
    assert sorted(np.concatenate(groups).tolist()) == list(range(500))
    assert all(int((lengths[g] - 1).sum()) <= 40 for g in groups)
    assert [g.tolist() for g in groups] == [g.tolist() for g in pack_groups(lengths, 40, seed=7)]


def test_cli_sft(tmp_path, capsys):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{\"conversations\": 1}\n")
    args = ["preprocess", "sft", "--input", str(src), "--format", "sharegpt", "--tokenizer", "shipped",
            "--output-prefix", str(tmp_path / "o"), "--seq-length", "32", "--no-progress"]
    assert main(args) == 2
    assert f"{src}:2: missing key" in capsys.readouterr().err
    assert main(args + ["--skip-bad-lines", "--pack", "--max-bad-fraction", "0.5"]) == 0
    assert "1 samples in 1 sequences" in capsys.readouterr().out


@pytest.mark.slow
def test_sft_wrapper_script(tmp_path):
    import subprocess

    script = ROOT / "toolkits" / "sft_data_preprocessing" / "run_make_sft_dataset_megatron.sh"
    tok_dir = ROOT / "pai_patch" / "assets" / "tokenizer"
    out = subprocess.run(["bash", str(script), str(SFT_TRAIN), "Qwen2Tokenizer", "alpaca", "64", str(tmp_path), str(tok_dir), "true"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    prefix = tmp_path / "mmap_qwen2_sft_datasets"
    meta = json.loads((tmp_path / "mmap_qwen2_sft_datasets_sft.json").read_text())
    assert meta["packed"] and meta["seq_length"] == 64
    assert len(build_sft_dataset(str(prefix), load_tokenizer("shipped"), 64, pack=True)) == IndexedReader.open(
        f"{prefix}_text_document").num_documents
