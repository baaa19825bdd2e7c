"""Greedy generation is token-identical to transformers' ``generate`` (HF and Megatron-Core backends)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pai_patch.generation.decoders import HFDecoder, McoreDecoder
from pai_patch.generation.engine import generate_ids
from pai_patch.generation.sampling import SamplingParams
from pai_patch.models import get_family
from pai_patch.models.base import ModelSize, Runtime, padded_vocab_size
from tests.conftest import dense_families

REPO = Path(__file__).resolve().parents[1]
PROMPT = [5, 77, 300, 1200, 9, 41]
# initializer_range 0.5 instead of 0.02: a default-initialised tiny model repeats one token forever,
# which would make parity trivially true
INIT_STD = 0.5


def tiny_hf(family: str) -> torch.nn.Module:
    import transformers

    fam = get_family(family)
    cfg = fam.hf_config(fam.size("tiny"))
    cfg.initializer_range = INIT_STD
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def hf_greedy(model: torch.nn.Module, ids: list[int], n: int, penalty: float = 1.0) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n, repetition_penalty=penalty)
    return out[0, len(ids):].tolist()


def copy_dense_weights(hf: torch.nn.Module, mcore: torch.nn.Module, size: ModelSize) -> None:
    """HF -> Megatron-Core at TP=1 for the dense families: fused QKV per query group, [gate; up] fc1."""
    sd = hf.state_dict()
    groups, d = size.num_query_groups, size.head_dim
    per_group = size.num_attention_heads // groups
    pad = padded_vocab_size(size.vocab_size)

    def vocab(w: torch.Tensor) -> torch.Tensor:
        return torch.cat([w, w.new_zeros(pad - w.shape[0], w.shape[1])])

    def qkv(prefix: str, kind: str) -> torch.Tensor:
        q, k, v = (sd[f"{prefix}self_attn.{p}_proj.{kind}"] for p in "qkv")
        parts = [q.reshape(groups, per_group * d, *q.shape[1:]), k.reshape(groups, d, *k.shape[1:]),
                 v.reshape(groups, d, *v.shape[1:])]
        return torch.cat(parts, 1).reshape(-1, *q.shape[1:])

    out = {"embedding.word_embeddings.weight": vocab(sd["model.embed_tokens.weight"]),
           "decoder.final_layernorm.weight": sd["model.norm.weight"]}
    if not size.tie_embeddings:
        out["output_layer.weight"] = vocab(sd["lm_head.weight"])
    for i in range(size.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[m + "self_attention.linear_qkv.weight"] = qkv(h, "weight")
        if size.qkv_bias:
            out[m + "self_attention.linear_qkv.bias"] = qkv(h, "bias")
        if size.qk_layernorm:
            for n in "qk":
                out[m + f"self_attention.{n}_layernorm.weight"] = sd[h + f"self_attn.{n}_norm.weight"]
        out[m + "input_layernorm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "self_attention.linear_proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "pre_mlp_layernorm.weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    missing, unexpected = mcore.load_state_dict(out, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("_extra_state")]


@pytest.mark.parametrize("family", [*dense_families(), "deepseek_v2"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_hf_loop_matches_transformers_generate(family: str, penalty: float) -> None:
    model = tiny_hf(family)
    params = SamplingParams(top_k=1, max_new_tokens=24, repetition_penalty=penalty)
    ours = generate_ids(HFDecoder(model), PROMPT, params, stop_ids=set())
    assert ours == hf_greedy(model, PROMPT, 24, penalty)
    assert len(set(ours)) > 3  # a real sequence, not one repeated token


@pytest.mark.parametrize("family", dense_families())
def test_mcore_kv_cache_loop_matches_transformers_generate(family: str) -> None:
    from pai_patch.parallel import model_parallel

    model = tiny_hf(family)
    fam = get_family(family)
    size = fam.size("tiny")
    with model_parallel(Runtime()):
        mcore = fam.build(size, Runtime())
        copy_dense_weights(model, mcore, size)
        ours = generate_ids(McoreDecoder(mcore, size.vocab_size), PROMPT, SamplingParams(top_k=1, max_new_tokens=24),
                            stop_ids=set())
    assert ours == hf_greedy(model, PROMPT, 24)


def test_cli_hf_writes_outputs_and_stops_at_eos(tmp_path: Path) -> None:
    model = tiny_hf("qwen2_5")
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    for f in (REPO / "pai_patch/assets/tokenizer").iterdir():
        shutil.copy(f, hf_dir)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "The capital of France is"}\n{"query": "What is 2 plus 3?"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "pai_patch", "generate", "--hf", str(hf_dir), "--input", str(prompts),
                           "--output", str(out), "--max-new-tokens", "12", "--repetition-penalty", "1.2"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["The capital of France is", "What is 2 plus 3?"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    for row in rows:
        ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        assert row["tokens"] == hf_greedy(model, ids, 12, 1.2)
        assert row["output"] == tok.decode(row["tokens"], skip_special_tokens=True)


def _cli_generate(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "pai_patch", "generate", *args], capture_output=True, text=True,
                          cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
@pytest.mark.parametrize("family, tp", [
    ("qwen2_5", 1), ("llama2", 1), pytest.param("qwen2_5", 2, marks=pytest.mark.dist), ("deepseek_v2", 1),
])
def test_cli_mcore_checkpoint_matches_transformers(tmp_path: Path, family: str, tp: int) -> None:
    """HF → Megatron-Core (converter) → `generate --mcore` at TP, token-identical to HF greedy."""
    from pai_patch.convert.engine import hf_to_mcore
    from pai_patch.parallel import model_parallel

    model = tiny_hf(family)
    model.save_pretrained(tmp_path / "hf")
    with model_parallel(Runtime()):  # the torch_dist writer needs a process group
        hf_to_mcore(get_family(family), "tiny", tmp_path / "hf", tmp_path / "mcore", tp=tp)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "The capital of France is"}\n{"text": "3 plus 4 equals"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = _cli_generate("--mcore", str(tmp_path / "mcore"), "--family", family, "--size", "tiny", "--tp", str(tp),
                         "--input", str(prompts), "--output", str(out), "--max-new-tokens", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / "pai_patch/assets/tokenizer"))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2
    for row in rows:
        ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        assert row["tokens"] == hf_greedy(model, ids, 16)
