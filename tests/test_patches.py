"""The CPU patch: listed with reasons, applied once, and megatron-core's CUDA literals land on CPU."""

from __future__ import annotations

import torch

from pai_patch.patches import apply_patches, cpu, no_te


def test_every_patch_has_a_reason() -> None:
    assert cpu.CPU_PATCHES and no_te.NO_TE_PATCHES
    for patch in cpu.CPU_PATCHES + no_te.NO_TE_PATCHES:
        assert len(patch.reason) > 15, patch


def test_cuda_literals_become_cpu_tensors() -> None:
    assert "cpu" in apply_patches()
    t = torch.zeros(3, device="cuda")
    assert t.device.type == "cpu"
    assert t.cuda() is t
    assert torch.ones(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert t.type() == "torch.cuda.FloatTensor"  # megatron dispatches on these names
    assert apply_patches() == ["no-te", "cpu"]  # idempotent; no TE on a CPU machine


def test_rng_tracker_forks_cpu_generator() -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    with model_parallel(Runtime()):
        model_parallel_cuda_manual_seed(7)
        before = torch.get_rng_state()
        with get_cuda_rng_tracker().fork():
            inside = torch.rand(4)
        assert torch.equal(torch.get_rng_state(), before)  # the default stream is restored
        with get_cuda_rng_tracker().fork():
            again = torch.rand(4)
        assert not torch.equal(inside, again)  # the forked stream advanced
