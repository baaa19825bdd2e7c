"""bench/gpu.py without a GPU: the FLOP model against a hand count, the dry run, one CPU training step."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pai_patch.models import get_family
from pai_patch.models.base import Runtime

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_gpu"] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def config(family: str, size: str = "tiny"):
    fam = get_family(family)
    return fam.size(size), fam.transformer_config(fam.size(size), Runtime(precision="bf16", seq_length=64))


def test_dense_flops_per_token_match_a_hand_count():
    size, cfg = config("qwen2_5")  # h=128, 4 layers, 4 heads, 2 KV groups, head 32, ffn 384, vocab 2048
    parts = bench.flop_model(cfg, size.vocab_size, seq_length=64)
    # per layer MACs: qkv 128*(4+2*2)*32 + out 4*32*128 = 49152; scores 4*(32+32)*64/2 = 8192;
    # SwiGLU 3*128*384 = 147456; logits once 128*2048 = 262144; training = 2 (MAC) * 3 (fwd+bwd)
    assert parts == {"attention projections": 6 * 4 * 49152, "attention scores": 6 * 4 * 8192,
                     "mlp": 6 * 4 * 147456, "logits": 6 * 262144}
    assert sum(parts.values()) == 6_488_064


def test_moe_mla_flops_per_token_match_a_hand_count():
    try:
        size, cfg = config("deepseek_v2")
    except KeyError:
        pytest.skip("deepseek_v2 family not in this build")
    # MLA: q 128*4*(32+16) = 24576, kv down 128*(32+16) = 6144, kv up 32*4*(32+32) = 8192,
    # out 4*32*128 = 16384 -> 55296; scores 4*(48+32)*64/2 = 10240.
    # layer 0 dense 3*128*384 = 147456; layers 1-3 MoE: router 128*8 + 3*128*(2*64 + 2*64) = 99328
    parts = bench.flop_model(cfg, size.vocab_size, seq_length=64)
    assert parts["attention projections"] == 6 * 4 * 55296
    assert parts["attention scores"] == 6 * 4 * 10240
    assert parts["mlp"] == 6 * (147456 + 3 * 99328)
    assert sum(parts.values()) == 6 * 969_728


def test_flops_grow_with_sequence_only_through_attention():
    size, cfg = config("qwen2_5")
    short, long = (bench.flop_model(cfg, size.vocab_size, s) for s in (64, 128))
    assert long["attention scores"] == 2 * short["attention scores"]
    assert long["mlp"] == short["mlp"] and long["logits"] == short["logits"]


def test_layers_that_fit_cuts_a_model_to_the_memory_budget():
    fam = get_family("qwen2_5")
    size = fam.size("0.5B")
    rt = Runtime(precision="bf16", seq_length=4096)
    full = bench.param_count(fam.transformer_config(size, rt), size.vocab_size, size.tie_embeddings)
    assert abs(full - size.published_params) / size.published_params < 0.01  # biases and norms only differ
    budget = int(full * bench.BYTES_PER_PARAM / bench.PARAM_MEMORY_SHARE * 0.5)  # half the model's need
    layers = bench.layers_that_fit(fam, size, rt, budget)
    assert 1 <= layers < size.num_layers
    fits = dataclasses.replace(size, num_layers=layers)
    assert bench.param_count(fam.transformer_config(fits, rt), size.vocab_size, True) * bench.BYTES_PER_PARAM \
        <= budget * bench.PARAM_MEMORY_SHARE


def test_dry_run_prints_the_flop_model_and_exits_0():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Qwen2.5-0.5B (24 layers)" in out.stdout and "Qwen2.5-1.5B (28 layers)" in out.stdout
    assert "no training: --dry-run" in out.stdout


def test_train_steps_updates_the_model_on_cpu():
    """The timed loop's body (forward with labels, backward, AdamW) on the tiny model."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from pai_patch.parallel import model_parallel

    fam = get_family("qwen2_5")
    rt = Runtime(precision="bf16", seq_length=32)
    with model_parallel(rt):
        model_parallel_cuda_manual_seed(1)
        model = fam.build(fam.size("tiny"), rt)
        before = [p.detach().clone() for p in model.parameters()]
        seconds = bench.train_steps(model, 2048, micro_batch=2, seq_length=32, steps=1, warmup=1,
                                    device=torch.device("cpu"))
        changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert seconds > 0
    assert changed == len(before)
