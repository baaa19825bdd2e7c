"""Training throughput on one GPU: tokens/s, TFLOP/s and MFU (``make bench-gpu``).

Trains the Qwen2.5-0.5B and 1.5B shapes and DeepSeek-V2-Lite cut to the layers that fit,
at seq 4096 in bf16, on random tokens, ``--accum`` micro batches per optimizer step (default 8,
the seeds' GBS/MBS), through the project's own trainer
(:class:`pai_patch.training.loop.Trainer`: megatron-core DDP, the distributed optimizer with
fp32 main weights, the pipeline schedule, the loss reduction), with whatever this machine has
(PyTorch alone, or Transformer Engine / FA3 through :mod:`pai_patch.backends`).  MFU is model
FLOPs (computed from the megatron-core config, attention included) over the device's datasheet
dense peak (:mod:`pai_patch.gpus`: 989 TFLOP/s bf16 on H100/H200), as Megatron-LM, PaLM and torchtitan
report it; the bf16 matmul peak measured on this device is printed beside it as "achievable",
with the share of it reached.  The optimizer step is part of the step time but not of the FLOPs;
its synchronised time is measured on its own and reported as its share of the step.

Each shape runs in its own process under its own time budget: a shape that runs out of
memory is retried with half the micro batch, then with full activation recompute; one that
fails or times out is reported and the next one runs.  Results go to ``bench_gpu.json``
(and the children's output to ``bench_gpu.log``) in ``--out``, ``$OUT`` or ``bench/_work/gpu``;
``bench/record.py`` turns them into the section of ``bench/RESULTS.md``.

``--device cpu`` trains tiny shapes of each family on the CPU through the same code, which is
how the tests exercise it.  Without CUDA (and without ``--device cpu``), or with ``--dry-run``,
it prints the FLOP model and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/gpu.py` from a checkout: pai_patch and bench.record

#: bytes per parameter while training here: bf16 weight, fp32 grad buffer, fp32 main weight, two fp32 Adam moments
BYTES_PER_PARAM = 2 + 4 + 4 + 8
#: share of device memory the parameters may take; the rest is activations, logits and the optimizer
#: step's temporaries (torch's foreach AdamW holds up to two fp32 copies; on CUDA without TE/Apex the
#: fused one runs, :class:`pai_patch.patches.no_te.FusedAdam`)
PARAM_MEMORY_SHARE = 0.5
#: a child's exit status when it ran out of device memory (the parent retries smaller)
EXIT_OOM = 3


@dataclass(frozen=True)
class Shape:
    family: str
    size: str
    label: str
    micro_batch: int
    #: cut the model to the layers that fit one device (the MoE shape)
    fit_layers: bool = False


#: micro batches from an activation estimate for 80 GB (about 3 MB/token for 1.5B, logits included)
SHAPES = (
    Shape("qwen2_5", "0.5B", "Qwen2.5-0.5B", micro_batch=4),
    Shape("qwen2_5", "1.5B", "Qwen2.5-1.5B", micro_batch=2),
    Shape("deepseek_v2", "A2.4B", "DeepSeek-V2-Lite", micro_batch=1, fit_layers=True),
)
#: what ``--device cpu`` trains: every family's tiny size, through the same code path
CPU_SHAPES = (
    Shape("qwen2_5", "tiny", "Qwen2.5-tiny", micro_batch=2),
    Shape("llama2", "tiny", "Llama2-tiny", micro_batch=2),
    Shape("deepseek_v2", "tiny", "DeepSeek-V2-tiny", micro_batch=2, fit_layers=True),
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
            size = dataclasses.replace(size, name=f"{size.name}-{layers}L", num_layers=layers)
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
    """Measured bf16 dense matmul throughput on random data: what is achievable on this device (not MFU's
    denominator, which is the datasheet peak)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 * iters / seconds / 1e12


def random_batch(vocab_size: int, micro_batch: int, seq_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One micro batch of random tokens in the trainer's format, already on the device."""
    tokens = torch.randint(0, vocab_size, (micro_batch, seq_length + 1), device=device)
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "loss_mask": torch.ones(micro_batch, seq_length, device=device),
        "position_ids": torch.arange(seq_length, device=device).unsqueeze(0).expand(micro_batch, -1).contiguous(),
    }


def job_config(shape: Shape, size: Any, micro_batch: int, seq_length: int, iterations: int,
               recompute: str, output_dir: str, accum: int = 1) -> Any:
    """The trainer job for one shape: bf16, distributed optimizer, ``accum`` micro batches per step."""
    from pai_patch.training.config import (CheckpointSection, ModelSection, OptimSection, ParallelSection,
                                           TrainConfig, TrainSection)

    return TrainConfig(
        model=ModelSection(family=shape.family, size=size.name),
        parallel=ParallelSection(distributed_optimizer=True),
        optim=OptimSection(lr=1e-5, min_lr=1e-6),
        train=TrainSection(micro_batch_size=micro_batch, global_batch_size=micro_batch * accum,
                           seq_length=seq_length, train_iters=iterations, precision="bf16", recompute=recompute,
                           flash_attn=True, recompute_layers=size.num_layers if recompute == "full" else 1),
        checkpoint=CheckpointSection(),
        output_dir=output_dir,
    )


def adam_implementation(optimizer: Any) -> str:
    """Which Adam megatron-core built: ``torch fused``, ``torch default`` (foreach on CUDA), or TE's/Apex's."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])[0].optimizer
    if any(group.get("fused") for group in inner.param_groups):
        return "torch fused"
    package = type(inner).__module__.split(".")[0]
    return "torch default" if package == "torch" else f"{package} {type(inner).__name__}"


def timed_calls(function: Any, device: torch.device, seconds: list[float]) -> Any:
    """``function`` that appends the synchronised wall time of each call to ``seconds``.

    The trainer's loss reduction copies the loss to the host just before the optimizer step, so
    the device is idle when the step starts and the synchronisation costs nothing there.
    """

    def timed(*args: Any, **kwargs: Any) -> Any:
        _sync(device)
        start = time.perf_counter()
        result = function(*args, **kwargs)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        return result

    return timed


def train_shape(shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    """Build ``shape`` in the trainer and time ``args.steps`` steps after ``args.warmup``; one result row."""
    import logging

    from pai_patch.models.attention import choose_sdpa_kernel
    from pai_patch.models.base import Runtime, padded_vocab_size
    from pai_patch.training.backend import backend_choice
    from pai_patch.training.loop import Trainer

    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # the backend does not change the FLOPs or the layers that fit; the trainer builds with its own
    rt = Runtime(precision="bf16", seq_length=args.seq, flash_attn=True)
    device_bytes = int(args.memory_gib * 2**30) if args.memory_gib else (
        torch.cuda.get_device_properties(device).total_memory if cuda else None)
    loaded = load_shape(shape, rt, device_bytes)
    if isinstance(loaded, str):
        return {"status": "skipped", "error": loaded}
    fam, size, cfg = loaded
    if size.name not in fam.sizes:  # the cut row, registered for this process only
        fam.sizes = {**fam.sizes, size.name: size}
    flops = sum(flop_model(cfg, padded_vocab_size(size.vocab_size), args.seq).values())
    job = job_config(shape, size, args.micro_batch, args.seq, args.warmup + args.steps, args.recompute,
                     "", accum=args.accum)
    choice = backend_choice(job)  # what the trainer picks for this job, by the same function
    attention = choice.attention
    if cuda and attention == "sdpa":
        qk, v = size.attention_head_dims
        kernel = choose_sdpa_kernel(qk, v, cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads,
                                    torch.bfloat16, device, masked=False)
        attention = f"sdpa/{kernel.name}"
    step_tokens = args.micro_batch * args.accum * args.seq
    row = {"label": shape.label, "layers": size.num_layers, "micro_batch": args.micro_batch, "accum": args.accum,
           "global_batch_tokens": step_tokens, "recompute": args.recompute, "attention": attention,
           "attention_reason": choice.reason, "flops_per_token": flops}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        trainer = Trainer(dataclasses.replace(job, output_dir=scratch))
        batch = random_batch(size.vocab_size, args.micro_batch, args.seq, device)
        iterators = [itertools.repeat(batch) for _ in trainer.model]
        losses = [trainer.train_step(iterators)["loss"] for _ in range(args.warmup)]
        optimizer_seconds: list[float] = []
        trainer.optimizer.step = timed_calls(trainer.optimizer.step, device, optimizer_seconds)
        _sync(device)
        start = time.perf_counter()
        losses += [trainer.train_step(iterators)["loss"] for _ in range(args.steps)]
        _sync(device)
        seconds = (time.perf_counter() - start) / args.steps
    tokens_s = step_tokens / seconds
    optimizer_s = sum(optimizer_seconds) / args.steps
    row.update(status="ok", precision=trainer.rt.precision, attention_backend=trainer.rt.attention_backend,
               adam=adam_implementation(trainer.optimizer),
               step_s=seconds, optimizer_s=optimizer_s, optimizer_share=optimizer_s / seconds,
               tokens_per_s=tokens_s, tflops=tokens_s * flops / 1e12, loss_first=losses[0], loss_last=losses[-1],
               peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None)
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child_main(args: argparse.Namespace) -> int:
    """One attempt at one shape, in this process; the row goes to ``args.result`` as JSON."""
    import traceback

    import torch.distributed as dist

    shape = next(s for s in SHAPES + CPU_SHAPES if s.label == args.child)
    try:
        row, code = train_shape(shape, args), 0
    except torch.cuda.OutOfMemoryError as err:
        row, code = {"status": "oom", "error": str(err).splitlines()[0]}, EXIT_OOM
    except Exception as err:  # noqa: BLE001 - reported in the row; the parent goes on with the next shape
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0]
        row, code = {"status": "failed", "error": f"{type(err).__name__}: {first}"}, 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(args.result).write_text(json.dumps(row))
    return code


# ---- the parent: shapes, budgets, retries ------------------------------------------------
def attempts(shape: Shape, micro_batch: int | None) -> list[tuple[int, str]]:
    """(micro batch, recompute) to try in order: halve the micro batch on OOM, then recompute everything."""
    mbs = micro_batch or shape.micro_batch
    plan = []
    while mbs >= 1:
        plan.append((mbs, "false"))
        mbs //= 2
    return plan + [(1, "full")]


def run_shape(shape: Shape, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Run ``shape`` in child processes within ``args.budget_s`` seconds; the last attempt's row."""
    deadline = time.monotonic() + args.budget_s
    row: dict[str, Any] = {"status": "failed", "error": "no attempt ran"}
    for micro_batch, recompute in attempts(shape, args.micro_batch):
        left = deadline - time.monotonic()
        if left < 5:
            row = {"status": "timed out", "error": f"budget of {args.budget_s:.0f} s used up before mbs {micro_batch}"}
            break
        with tempfile.TemporaryDirectory(prefix="bench-gpu-row-") as scratch:
            result = Path(scratch) / "row.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", shape.label, "--result", str(result),
                   "--device", args.device, "--seq", str(args.seq), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--micro-batch", str(micro_batch), "--accum", str(args.accum),
                   "--recompute", recompute,
                   *(["--memory-gib", str(args.memory_gib)] if args.memory_gib else [])]
            log.write(f"\n==== {shape.label}: mbs {micro_batch}, recompute {recompute} ====\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                row = {"status": "timed out", "error": f"still running after the {args.budget_s:.0f} s budget"}
                break
            row = json.loads(result.read_text()) if result.is_file() else {
                "status": "failed", "error": f"exit status {code}; see bench_gpu.log"}
        if row["status"] != "oom":
            break
    row.setdefault("label", shape.label)
    row.setdefault("micro_batch", micro_batch)
    row.setdefault("accum", args.accum)
    row.setdefault("recompute", recompute)
    return row


def print_flop_model(args: argparse.Namespace, shapes: tuple[Shape, ...]) -> None:
    """The FLOP model per shape at full depth: what MFU divides by, checkable without a GPU."""
    from pai_patch.models.base import Runtime, padded_vocab_size

    rt = Runtime(precision="bf16", seq_length=args.seq)
    print(f"FLOP model: training FLOPs per token at seq {args.seq} (fwd + bwd, causal attention, no recompute)")
    for shape in shapes:
        loaded = load_shape(shape, rt, None)
        if isinstance(loaded, str):
            print(f"  {shape.label}: {loaded}")
            continue
        _, size, cfg = loaded
        parts = flop_model(cfg, padded_vocab_size(size.vocab_size), args.seq)
        detail = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in parts.items())
        print(f"  {shape.label} ({size.num_layers} layers): {sum(parts.values()) / 1e9:.2f} GFLOP/token ({detail})")


def environment(device: torch.device, peak: float | None) -> dict[str, Any]:
    """Date, device and software versions: the header of a results section."""
    from pai_patch.gpus import datasheet_peak
    from pai_patch.backends import choose_backend
    from pai_patch.doctor import environment as doctor_environment

    env = doctor_environment()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    env.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__, device=name,
               datasheet_peak_tflops=datasheet_peak(name, "bf16"), matmul_peak_tflops=peak,
               attention=dataclasses.asdict(choose_backend(True)))
    return env


def output_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("OUT") or ROOT / "bench" / "_work" / "gpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the FLOP model and exit (no training)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda (default when a GPU is present) or cpu (tiny shapes, the tests' path)")
    parser.add_argument("--shapes", nargs="*", default=None, help="labels to run (default: all for the device)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 4096 on cuda, 64 on cpu)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=None, help="first micro batch to try for every shape")
    parser.add_argument("--accum", type=int, default=8,
                        help="micro batches per optimizer step (gradient accumulation; 8 = the seeds' GBS 8, MBS 1)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="device memory to cut the MoE shape for (default: the device's)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="seconds each shape may take, retries included")
    parser.add_argument("--out", default=None, help="where bench_gpu.json/.log go (default $OUT, else bench/_work/gpu)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one attempt at one shape, run by the parent
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--recompute", default="false", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.accum < 1:
        parser.error(f"--accum {args.accum}: expected at least 1 micro batch per step")
    train = args.device is not None or torch.cuda.is_available()
    available = CPU_SHAPES if args.device == "cpu" else SHAPES
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.seq is None:
        args.seq = 64 if available is CPU_SHAPES else 4096
    if args.child:
        return child_main(args)
    shapes = tuple(s for s in available if args.shapes is None or s.label in args.shapes)
    unknown = set(args.shapes or ()) - {s.label for s in available}
    if unknown:
        parser.error(f"unknown shape(s) for --device {args.device}: {', '.join(sorted(unknown))}; "
                     f"valid: {', '.join(s.label for s in available)}")
    print_flop_model(args, shapes)
    if args.dry_run or not train:
        print("no training: " + ("--dry-run" if args.dry_run else "no CUDA GPU on this machine (--device cpu trains "
                                 "the tiny shapes)"))
        return 0
    return run_all(args, shapes)


def run_all(args: argparse.Namespace, shapes: tuple[Shape, ...]) -> int:
    """Peak, then every shape in its own budget; writes bench_gpu.json and prints the table."""
    from pai_patch.gpus import mfu
    from bench.record import render_table
    from pai_patch.utils import write_text_atomic

    device = torch.device(args.device)
    peak = matmul_peak_tflops(device) if device.type == "cuda" else None
    env = environment(device, peak)
    datasheet = env["datasheet_peak_tflops"]
    print(f"\ndevice: {env['device']}" + (f", datasheet dense bf16 peak {datasheet:.0f} TFLOP/s (MFU's denominator)"
                                         if datasheet else "")
          + (f", measured bf16 matmul peak {peak:.1f} TFLOP/s (achievable)" if peak else ""))
    print(f"date: {env['date']}, torch {torch.__version__}, seq {args.seq}, {args.accum} micro batches per step, "
          f"{args.steps} steps after {args.warmup} warm-up, per-shape budget {args.budget_s:.0f} s\n", flush=True)
    out = output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"env": env, "seq": args.seq, "accum": args.accum, "steps": args.steps, "warmup": args.warmup,
               "rows": []}
    with open(out / "bench_gpu.log", "w", encoding="utf-8") as log:
        for shape in shapes:
            row = run_shape(shape, args, log)
            if row.get("tflops") is not None:
                row["mfu"] = mfu(row["tflops"], env["device"], row.get("precision", "bf16"))
                row["of_achievable"] = row["tflops"] / peak if peak else None
            results["rows"].append(row)
            write_text_atomic(out / "bench_gpu.json", json.dumps(results, indent=2))
            print(f"{shape.label}: {row['status']}" + (f" ({row['error']})" if row.get("error") else ""), flush=True)
    print("\n" + render_table(results))
    print(f"\nwrote {out / 'bench_gpu.json'}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
