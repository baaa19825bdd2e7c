"""HF + DeepSpeed flow: config rendering from the template, data loading and collation (fast, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pai_patch.hf_train import data, ds_config

VALUES = dict(zero_stage=3, micro_batch=2, grad_accum=4, lr=2e-5, precision="bf16", warmup_steps=0,
              total_steps=100, torch_adam=True)


def test_template_renders_every_placeholder() -> None:
    cfg = ds_config.render(ds_config.DEFAULT_TEMPLATE, ds_config.template_values(**VALUES))
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    assert cfg["optimizer"]["params"]["lr"] == 2e-5 and cfg["scheduler"]["params"]["warmup_max_lr"] == 2e-5
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 1  # DeepSpeed rejects 0
    assert "${" not in json.dumps(cfg)


def test_unfilled_placeholder_and_bad_values_are_named(tmp_path: Path) -> None:
    template = tmp_path / "t.json"
    template.write_text('{"a": {"b": ["${NOPE}"]}}')
    with pytest.raises(ValueError, match=r"t.json: placeholder \$\{NOPE\} at a.b\[0\] has no value"):
        ds_config.render(template, ds_config.template_values(**VALUES))
    template.write_text('{"a": 1,,}')
    with pytest.raises(ValueError, match=r"t.json:1: not valid JSON"):
        ds_config.render(template, {})
    with pytest.raises(ValueError, match=r"ZeRO stage 4: expected one of 0, 1, 2, 3"):
        ds_config.template_values(**{**VALUES, "zero_stage": 4})


def test_text_alpaca_jsonl_and_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps([{"text": "hello"}, {"content": "world"}]))
    (tmp_path / "d" / "b.jsonl").write_text('{"instruction": "Q?", "input": "ctx", "output": "A"}\n')
    examples = data.load_examples(tmp_path / "d")
    assert examples == [data.Example("", "hello"), data.Example("", "world"), data.Example("Q?\nctx\n", "A")]


def test_bad_record_is_named(tmp_path: Path) -> None:
    f = tmp_path / "train.json"
    f.write_text(json.dumps([{"text": "ok"}, {"question": "no"}]))
    with pytest.raises(ValueError, match=rf"{f}\[1\]: expected a 'text' \(or 'content'\) string .*\['question'\]"):
        data.load_examples(f)
    g = tmp_path / "train.jsonl"
    g.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=rf"{g}:2: not valid JSON"):
        data.load_examples(g)


def test_prompt_is_masked_and_padding_ignored() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parents[1] / "pai_patch/assets/tokenizer"))
    ids, labels = data.encode(data.Example("What is 2 plus 3?\n", "5"), tok, 64)
    prompt_len = len(tok("What is 2 plus 3?\n", add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [data.IGNORE] * prompt_len and labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tok.eos_token_id
    batch = data.collate([(ids, labels), ([1, 2], [1, 2])], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids))
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * (len(ids) - 2)
    assert torch.all(batch["labels"][1, 2:] == data.IGNORE)


def test_first_run_names_the_op_deepspeed_compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the first run JIT-compiles DeepSpeed's Adam inside deepspeed.initialize, minutes without a word."""
    from pai_patch.hf_train.trainer import ops_to_compile

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    gpu = ds_config.render(ds_config.DEFAULT_TEMPLATE, ds_config.template_values(**{**VALUES, "torch_adam": False}))
    cpu = ds_config.render(ds_config.DEFAULT_TEMPLATE, ds_config.template_values(**VALUES))
    assert ops_to_compile(cpu) == []  # torch's Adam: nothing to build
    assert ops_to_compile(gpu) == ["fused_adam"]
    offload = {**gpu, "zero_optimization": {**gpu["zero_optimization"], "offload_optimizer": {"device": "cpu"}}}
    assert ops_to_compile(offload) == ["cpu_adam"]
    (tmp_path / "fused_adam").mkdir(exist_ok=True)
    (tmp_path / "fused_adam" / "fused_adam.so").write_bytes(b"")  # what the first build leaves in the cache
    assert ops_to_compile(gpu) == []
