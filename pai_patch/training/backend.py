"""Which implementation a run uses: Transformer Engine spec on GPU, local spec + SDPA on CPU."""

from __future__ import annotations

from pai_patch.backends import BackendChoice, resolve_backend
from pai_patch.models.base import Runtime
from pai_patch.training.config import TrainConfig


def backend_choice(cfg: TrainConfig) -> BackendChoice:
    """Validate the precision and pick (and log) the attention backend for this job's model."""
    from pai_patch.models import get_family

    family = get_family(cfg.model.family)
    qk, v = family.size(cfg.model.size).attention_head_dims
    return resolve_backend(cfg.train.flash_attn, cfg.train.precision, equal_head_dims=qk == v)


def backend_runtime(cfg: TrainConfig) -> Runtime:
    """The runtime that builds the model with :func:`backend_choice`'s backend.

    The choice reaches the model as ``TransformerConfig.attention_backend`` (megatron-core sets
    TE's switches from it), so the kernel that runs is the one that was logged.
    """
    choice = backend_choice(cfg)
    return cfg.runtime(use_te=choice.use_te, attention_backend=choice.attn_backend)
