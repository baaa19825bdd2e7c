"""Activation checkpointing changes what the forward pass keeps for backward (memory), not the math."""

from __future__ import annotations

import torch

from pai_patch.models import get_family
from pai_patch.models.base import Runtime
from pai_patch.parallel import model_parallel


def _saved_bytes_and_loss(recompute: str) -> tuple[int, float]:
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    family = get_family("qwen2_5")
    rt = Runtime(recompute=recompute, recompute_layers=4, seq_length=64)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with model_parallel(rt):
        torch.manual_seed(0)
        model_parallel_cuda_manual_seed(0)
        model = family.build(family.size("tiny"), rt)
        tokens = torch.randint(0, 1000, (2, 64))
        positions = torch.arange(64).expand(2, -1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(tokens, positions, None, labels=tokens).mean()
        loss.backward()
    return saved, loss.item()


def test_recompute_saves_less_and_keeps_the_loss() -> None:
    none_bytes, none_loss = _saved_bytes_and_loss("false")
    sel_bytes, sel_loss = _saved_bytes_and_loss("sel")
    full_bytes, full_loss = _saved_bytes_and_loss("full")
    assert full_bytes < sel_bytes < none_bytes, (none_bytes, sel_bytes, full_bytes)
    assert none_loss == sel_loss == full_loss
