"""Which implementation a run uses: Transformer Engine spec on GPU, local spec + SDPA on CPU."""

from __future__ import annotations

from pai_patch.models.base import Runtime
from pai_patch.training.config import TrainConfig


def backend_runtime(cfg: TrainConfig) -> Runtime:
    """Validate the precision, pick the attention backend, and return the runtime that builds it.

    The choice reaches the model as ``TransformerConfig.attention_backend`` (megatron-core sets
    TE's switches from it), so the kernel that runs is the one :func:`resolve_backend` logs.
    """
    from pai_patch.backends import resolve_backend

    choice = resolve_backend(cfg.train.flash_attn, cfg.train.precision)
    return cfg.runtime(use_te=choice.use_te, attention_backend=choice.attn_backend)
