"""Which implementation a run uses: Transformer Engine spec on GPU, local spec + SDPA on CPU."""

from __future__ import annotations

import logging

from pai_patch.models.base import te_available
from pai_patch.training.config import TrainConfig

log = logging.getLogger(__name__)


def choose_backend(cfg: TrainConfig) -> bool:
    """Validate precision and return whether to build with the Transformer Engine spec."""
    from pai_patch.backends import check_precision, resolve_backend

    check_precision(cfg.train.precision)
    choice = resolve_backend(cfg.train.flash_attn, cfg.train.precision)
    log.info("attention backend: %s (%s)", choice.attention, choice.reason)
    return choice.use_te and te_available()
