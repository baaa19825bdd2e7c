"""bf16 training on a GPU with the distributed optimizer: every family trains, saves and resumes.

The trainer in-process for the three tiny families (random tokens, one batch repeated, so the
loss must fall), and once through ``python -m pai_patch train`` on the shipped corpus, which
also runs megatron-core's compiled dataset helpers and the metrics/checkpoint writers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.gpu.resume import train_save_resume

#: GPU kernels (flash-attention backward, MoE scatter) may add in another order between runs
RESUME_TOLERANCE = 5e-3


@pytest.mark.parametrize("family", ["qwen2_5", "llama2", "deepseek_v2"])
def test_bf16_distributed_optimizer_trains_saves_and_resumes(tmp_path: Path, family: str) -> None:
    run = train_save_resume(family, tmp_path / "run", seq_length=256)
    assert run.device.startswith("cuda") and run.param_dtypes == {torch.bfloat16}, (run.device, run.param_dtypes)
    assert run.restored_iteration == 3
    assert all(math.isfinite(x) for x in run.straight + run.resumed), run
    assert run.straight[-1] < run.first_loss - 0.05, (run.first_loss, run.straight)
    assert max(abs(a - b) for a, b in zip(run.straight, run.resumed)) < RESUME_TOLERANCE, run


def test_train_command_on_gpu_in_bf16(corpus_prefix: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "model.family=qwen2_5", "model.size=tiny", f"data.train_path={corpus_prefix}",
                     f"output_dir={out}", "train.seq_length=128", "train.train_iters=4", "train.precision=bf16",
                     "parallel.distributed_optimizer=true", timeout=300)
    assert "done: iteration 4" in result.stdout, result.stdout[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert (out / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"


def test_fused_adam_on_cuda_resumes_exactly() -> None:
    """Without TE/Apex megatron-core builds ``no_te.FusedAdam`` on CUDA (one fused kernel); a fresh one
    loading its state dict takes the unbroken run's steps bit for bit, with ``step`` kept on the GPU."""
    import megatron.core.optimizer as mcore_optimizer

    from pai_patch.patches import apply_patches, no_te

    if "no-te" in apply_patches():
        assert mcore_optimizer.Adam is no_te.FusedAdam and not mcore_optimizer.USING_PYTORCH_OPTIMIZER
    gen = torch.Generator(device="cuda").manual_seed(0)
    start = [torch.randn(4096, 64, device="cuda", generator=gen) for _ in range(3)]
    grads = [[torch.randn(p.shape, device="cuda", generator=gen) for p in start] for _ in range(4)]

    def steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], which: range) -> None:
        for i in which:
            for p, g in zip(params, grads[i]):
                p.grad = g.clone()
            opt.step()

    straight = [torch.nn.Parameter(p.clone()) for p in start]
    steps(no_te.FusedAdam(straight, lr=1e-2, weight_decay=0.1), straight, range(4))
    first = [torch.nn.Parameter(p.clone()) for p in start]
    opt = no_te.FusedAdam(first, lr=1e-2, weight_decay=0.1)
    steps(opt, first, range(2))
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    again = no_te.FusedAdam(resumed, lr=1e-2, weight_decay=0.1)
    again.load_state_dict(opt.state_dict())
    assert all(again.state[p]["step"].device == p.device for p in resumed)
    steps(again, resumed, range(2, 4))
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
