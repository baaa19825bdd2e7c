"""The fused AdamW megatron-core builds on a GPU without TE/Apex (``no_te.FusedAdam``), forced on the CPU:
it is torch's fused AdamW, stays fused (``step`` on the parameter's device) after loading a foreach
run's state, and megatron's optimizers resume with it exactly: the distributed one in fp32 and bf16,
the regular mixed-precision one in bf16."""

from __future__ import annotations

import importlib

import pytest
import torch

from pai_patch.patches import no_te


def _params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 8, generator=gen)) for _ in range(3)]


def _steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], count: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def test_fused_adam_is_torch_fused_adamw_and_passes_megatrons_checks():
    mine, theirs = _params(), _params()
    _steps(no_te.FusedAdam(mine, lr=1e-2, weight_decay=0.1), mine, 3)
    _steps(torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, fused=True), theirs, 3)
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    # DistributedOptimizer accepts a torch Adam; HybridDeviceOptimizer's CPU part is an AdamW, this is not
    assert isinstance(no_te.FusedAdam(_params()), torch.optim.Adam)
    assert not isinstance(no_te.FusedAdam(_params()), torch.optim.AdamW)
    plain = no_te.FusedAdam(_params(), adam_w_mode=False)
    assert plain.param_groups[0]["decoupled_weight_decay"] is False


def test_fused_adam_stays_fused_after_loading_a_foreach_runs_state():
    """Resuming a checkpoint of a foreach run: its groups say foreach and its steps live on the host."""
    foreach_params = _params()
    foreach = torch.optim.AdamW(foreach_params, lr=1e-2, foreach=True)
    _steps(foreach, foreach_params, 2)
    params = _params()
    fused = no_te.FusedAdam(params, lr=1e-2)
    fused.load_state_dict(foreach.state_dict())
    for group in fused.param_groups:
        assert (group["fused"], group["foreach"], group["decoupled_weight_decay"]) == (True, None, True)
    for p in params:
        step = fused.state[p]["step"]
        assert step.dtype == torch.float32 and step.device == p.device and step.item() == 2.0


def test_fused_patches_name_what_megatron_looks_up():
    import megatron.core.optimizer as mcore_optimizer

    for patch in no_te.FUSED_ADAM_PATCHES:
        assert patch.module == "megatron.core.optimizer" and hasattr(mcore_optimizer, patch.attr), patch
        assert len(patch.reason) > 15, patch


@pytest.fixture
def fused_megatron_adam(monkeypatch) -> list[int]:
    """megatron-core builds ``FusedAdam`` here too; counts the fused AdamW kernel's calls."""
    for patch in no_te.FUSED_ADAM_PATCHES:
        monkeypatch.setattr(importlib.import_module(patch.module), patch.attr, patch.replacement)
    calls = [0]
    kernel = torch._fused_adamw_

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adamw_", counted)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("precision,distributed", [("fp32", True), ("bf16", True), ("bf16", False)])
def test_megatron_optimizer_with_fused_adam_resumes_exactly(tmp_path, monkeypatch, fused_megatron_adam,
                                                            precision, distributed):
    """The distributed optimizer in fp32 and bf16, and bf16's regular mixed-precision optimizer."""
    from pai_patch.training import loop
    from tests.gpu import resume

    if precision == "bf16":
        monkeypatch.setattr(loop, "_cpu_precision", lambda rt: rt)  # keep bf16 on the CPU
    job_config = resume.job_config

    def with_optimizer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        job = job_config(*args, **kwargs)
        job.parallel.distributed_optimizer = distributed
        return job

    monkeypatch.setattr(resume, "job_config", with_optimizer)
    run = resume.train_save_resume("qwen2_5", tmp_path)
    assert run.param_dtypes == {getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[precision])}
    assert run.restored_iteration == 3
    assert fused_megatron_adam[0] >= 3 + 2 + 2  # every step of both runs, after the resume too
    assert run.resumed == run.straight, run
    assert run.straight[-1] < run.first_loss
