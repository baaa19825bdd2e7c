"""Training throughput on one GPU: tokens/s, TFLOP/s and MFU (``make bench-gpu``).

Trains the Qwen2.5-0.5B and 1.5B shapes and DeepSeek-V2-Lite cut to the layers that fit,
at seq 4096 in bf16, on random tokens, with whatever this machine has (PyTorch alone, or
Transformer Engine / FA3 through :mod:`pai_patch.backends`).  MFU is model FLOPs (computed
from the megatron-core config, attention included) over the bf16 matmul peak measured on
this device, so the number means the same on an H100, an H800 or an H20.

Without CUDA, or with ``--dry-run``, it prints the FLOP model and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/gpu.py` from a checkout

#: bytes per parameter while training here: bf16 weight + bf16 grad + two bf16 AdamW moments
BYTES_PER_PARAM = 8
#: share of device memory the parameters may take; the rest is activations and logits
PARAM_MEMORY_SHARE = 0.6


@dataclass(frozen=True)
class Shape:
    family: str
    size: str
    label: str
    micro_batch: int
    #: cut the model to the layers that fit one device (the MoE shape)
    fit_layers: bool = False


SHAPES = (
    Shape("qwen2_5", "0.5B", "Qwen2.5-0.5B", micro_batch=4),
    Shape("qwen2_5", "1.5B", "Qwen2.5-1.5B", micro_batch=4),
    Shape("deepseek_v2", "A2.4B", "DeepSeek-V2-Lite", micro_batch=1, fit_layers=True),
)


# ---- FLOP model ------------------------------------------------------------------------
def _is_moe_layer(cfg: Any, index: int) -> bool:
    if not getattr(cfg, "num_moe_experts", None):
        return False
    freq = cfg.moe_layer_freq
    return bool(freq[index]) if isinstance(freq, (list, tuple)) else index % freq == 0


def _attention_macs(cfg: Any, seq_length: int) -> tuple[int, float]:
    """Per token, one layer: (projection MACs, score MACs).  Scores are causal: s/2 keys on average."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    if getattr(cfg, "multi_latent_attention", False):
        qk, v = cfg.qk_head_dim + cfg.qk_pos_emb_head_dim, cfg.v_head_dim
        q_proj = h * heads * qk if cfg.q_lora_rank is None else h * cfg.q_lora_rank + cfg.q_lora_rank * heads * qk
        kv_proj = h * (cfg.kv_lora_rank + cfg.qk_pos_emb_head_dim) + cfg.kv_lora_rank * heads * (cfg.qk_head_dim + v)
        proj = q_proj + kv_proj + heads * v * h
    else:
        qk = v = cfg.kv_channels
        proj = h * (heads + 2 * cfg.num_query_groups) * qk + heads * v * h
    scores = heads * (qk + v) * seq_length / 2
    return proj, scores


def _mlp_macs(cfg: Any, index: int) -> int:
    """Per token, one layer: the dense MLP, or router + top-k routed experts + shared experts."""
    gate = 3 if cfg.gated_linear_unit else 2
    h = cfg.hidden_size
    if not _is_moe_layer(cfg, index):
        return gate * h * cfg.ffn_hidden_size
    shared = cfg.moe_shared_expert_intermediate_size or 0
    return h * cfg.num_moe_experts + gate * h * (cfg.moe_router_topk * cfg.moe_ffn_hidden_size + shared)


def flop_model(cfg: Any, vocab_size: int, seq_length: int) -> dict[str, float]:
    """Training FLOPs per token (forward + backward = 3x forward, no recompute) by part.

    Counts matmuls only (norms, softmax and rotary are <1%), as MFU conventionally does.
    """
    proj, scores = _attention_macs(cfg, seq_length)
    parts = {
        "attention projections": proj * cfg.num_layers,
        "attention scores": scores * cfg.num_layers,
        "mlp": sum(_mlp_macs(cfg, i) for i in range(cfg.num_layers)),
        "logits": cfg.hidden_size * vocab_size,
    }
    return {name: 2 * 3 * macs for name, macs in parts.items()}


def param_count(cfg: Any, vocab_size: int, tied: bool) -> int:
    """Weights of the matmuls and embeddings (every expert counts here, unlike in FLOPs)."""
    gate = 3 if cfg.gated_linear_unit else 2
    h = cfg.hidden_size
    total = vocab_size * h * (1 if tied else 2)
    for i in range(cfg.num_layers):
        total += _attention_macs(cfg, 0)[0]
        if _is_moe_layer(cfg, i):
            shared = cfg.moe_shared_expert_intermediate_size or 0
            total += h * cfg.num_moe_experts + gate * h * (cfg.num_moe_experts * cfg.moe_ffn_hidden_size + shared)
        else:
            total += gate * h * cfg.ffn_hidden_size
    return total


# ---- models ------------------------------------------------------------------------------
def load_shape(shape: Shape, rt: Any, device_bytes: int | None) -> tuple[Any, Any, Any] | str:
    """(family, size row, config) for ``shape``, cut to fit ``device_bytes``; or why it is skipped."""
    from pai_patch.models import get_family

    try:
        fam = get_family(shape.family)
        size = fam.size(shape.size)
    except KeyError as err:
        return f"skipped: {err.args[0]} (the family is not in this build yet)"
    if shape.fit_layers and device_bytes is not None:
        layers = layers_that_fit(fam, size, rt, device_bytes)
        if layers < size.num_layers:
            size = dataclasses.replace(size, num_layers=layers)
    return fam, size, fam.transformer_config(size, rt)


def layers_that_fit(fam: Any, size: Any, rt: Any, device_bytes: int) -> int:
    """Most layers whose weights, grads and AdamW state take at most PARAM_MEMORY_SHARE of the device."""
    budget = device_bytes * PARAM_MEMORY_SHARE / BYTES_PER_PARAM
    best = 1
    for n in range(1, size.num_layers + 1):
        cfg = fam.transformer_config(dataclasses.replace(size, num_layers=n), rt)
        if param_count(cfg, size.vocab_size, size.tie_embeddings) > budget:
            break
        best = n
    return best


# ---- measurement -------------------------------------------------------------------------
def matmul_peak_tflops(device: torch.device, n: int = 8192, iters: int = 50) -> float:
    """Measured bf16 dense matmul throughput: the denominator of MFU on this exact device."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def train_steps(model: torch.nn.Module, vocab_size: int, micro_batch: int, seq_length: int, steps: int,
                warmup: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` AdamW steps after ``warmup`` untimed ones (random tokens)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    tokens = torch.randint(0, vocab_size, (micro_batch, seq_length + 1), device=device)
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    position_ids = torch.arange(seq_length, device=device).unsqueeze(0).expand(micro_batch, -1)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(inputs, position_ids, None, labels=labels).float().mean()
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_shape(shape: Shape, args: argparse.Namespace, peak: float) -> str:
    """One row of the results table (or the reason the shape was skipped)."""
    from pai_patch.backends import resolve_backend
    from pai_patch.models.base import Runtime, padded_vocab_size
    from pai_patch.parallel import model_parallel
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    choice = resolve_backend(flash_attn=True, precision="bf16")
    os.environ.update(choice.te_env())
    rt = Runtime(precision="bf16", seq_length=args.seq, use_te=choice.use_te,
                 flash_attn=choice.attention in ("fa3", "te-flash"))
    device = torch.device("cuda", torch.cuda.current_device())
    loaded = load_shape(shape, rt, torch.cuda.get_device_properties(device).total_memory)
    if isinstance(loaded, str):
        return f"| {shape.label} | {loaded} |"
    fam, size, cfg = loaded
    micro_batch = args.micro_batch or shape.micro_batch
    flops = sum(flop_model(cfg, padded_vocab_size(size.vocab_size), args.seq).values())
    try:
        with model_parallel(rt):
            model_parallel_cuda_manual_seed(1234)
            model = fam.build(size, rt, config=cfg)
            seconds = train_steps(model, size.vocab_size, micro_batch, args.seq, args.steps, args.warmup, device)
            del model
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return f"| {shape.label} ({size.num_layers} layers, mbs {micro_batch}) | skipped: out of memory |"
    tokens_s = micro_batch * args.seq / seconds
    tflops = tokens_s * flops / 1e12
    return (f"| {shape.label} ({size.num_layers} layers, mbs {micro_batch}) | {choice.attention} | "
            f"{tokens_s:,.0f} | {tflops:.1f} | {100 * tflops / peak:.1f}% |")


def print_flop_model(args: argparse.Namespace) -> None:
    """The FLOP model per shape at full depth: what MFU divides by, checkable without a GPU."""
    from pai_patch.models.base import Runtime, padded_vocab_size

    rt = Runtime(precision="bf16", seq_length=args.seq)
    print(f"FLOP model: training FLOPs per token at seq {args.seq} (fwd + bwd, causal attention, no recompute)")
    for shape in SHAPES:
        loaded = load_shape(shape, rt, None)
        if isinstance(loaded, str):
            print(f"  {shape.label}: {loaded}")
            continue
        _, size, cfg = loaded
        parts = flop_model(cfg, padded_vocab_size(size.vocab_size), args.seq)
        detail = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in parts.items())
        print(f"  {shape.label} ({size.num_layers} layers): {sum(parts.values()) / 1e9:.2f} GFLOP/token ({detail})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the FLOP model and exit (no training)")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=None, help="override every shape's micro batch")
    args = parser.parse_args(argv)
    print_flop_model(args)
    if args.dry_run or not torch.cuda.is_available():
        print("no training: " + ("--dry-run" if args.dry_run else "no CUDA GPU on this machine"))
        return 0
    device = torch.device("cuda", torch.cuda.current_device())
    peak = matmul_peak_tflops(device)
    print(f"\ndevice: {torch.cuda.get_device_name(device)}, measured bf16 matmul peak {peak:.1f} TFLOP/s")
    print(f"date: {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, seq {args.seq}, bf16, "
          f"{args.steps} steps after {args.warmup} warm-up\n")
    print("| shape | attention | tokens/s/GPU | TFLOP/s/GPU | MFU |\n|---|---|---|---|---|")
    for shape in SHAPES:
        print(bench_shape(shape, args, peak), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
