"""DeepSeek-V2's group-limited ("device-limited") routing on megatron-core's router.

DeepSeek-V2 ranks expert groups by their *best* expert's score (``topk_method =
"group_limited_greedy"``: ``scores.view(tokens, groups, -1).max(-1)``).  megatron-core's
built-in group routing ranks them by the sum of their top ``topk // group_topk`` scores
(DeepSeek-V3's rule); for the 236B model (top-6 over 3 groups) that sums the best two,
so a converted checkpoint would route some tokens differently from the published model.

megatron's top-k selection takes a ``router_replay`` object whose ``get_replay_topk``
replaces the top-k computation; :class:`DeepseekV2Router` installs :class:`GroupMaxTopk`
there, leaving the rest of ``TopKRouter`` (scores, scaling, aux losses) untouched.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from megatron.core.transformer.moe.router import TopKRouter


class GroupMaxTopk:
    """Top-k restricted to the ``group_topk`` groups with the highest single score."""

    def get_replay_topk(self, scores: torch.Tensor, topk: int, num_groups: int | None = None,
                        group_topk: int | None = None,
                        default_compute_topk: Callable[..., Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not group_topk:
            return torch.topk(scores, k=topk, dim=-1)
        tokens, experts = scores.shape
        group_scores = scores.view(tokens, num_groups, -1).max(dim=-1).values
        group_idx = torch.topk(group_scores, k=group_topk, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        expert_mask = group_mask.unsqueeze(-1).expand(tokens, num_groups, experts // num_groups).reshape(tokens, -1)
        return torch.topk(scores.masked_fill(~expert_mask, float("-inf")), k=topk, dim=-1)


class DeepseekV2Router(TopKRouter):
    """``TopKRouter`` with DeepSeek-V2's group ranking (plain top-k without groups)."""

    def __init__(self, config: Any, pg_collection: Any = None) -> None:
        super().__init__(config=config, pg_collection=pg_collection)
        if config.moe_router_group_topk:
            if self.router_replay is not None:
                raise ValueError("moe_enable_routing_replay cannot be combined with DeepSeek-V2 group-limited "
                                 "routing: both replace the router's top-k selection")
            self.router_replay = GroupMaxTopk()

    def attach_and_log_load_balancing_loss(self, activation: torch.Tensor, aux_loss_coeff: float,
                                           aux_loss: torch.Tensor, aux_loss_name: str, reduce_group: Any,
                                           reduce_group_has_dp: bool = False,
                                           valid_token_count: Any = None) -> torch.Tensor:
        """Scale the auxiliary loss's gradient by the tokens it was computed over, not this rank's.

        Under per-token loss megatron-core multiplies a rank's aux loss by the rank's tokens,
        and ``finalize_model_grads`` divides by the tokens of DP x CP.  With CP, or SP at TP>1,
        a rank's aux loss is only its share of the loss over the tokens of its whole CP (TP)
        group, so the aux-loss gradient came out CP (TP) times too small and such layouts
        trained differently from one process.  Counting the group's tokens (ranks hold equal
        shares) restores the single-process gradient.
        """
        if valid_token_count is not None and not reduce_group_has_dp:
            valid_token_count = valid_token_count * reduce_group.size()
        return super().attach_and_log_load_balancing_loss(activation, aux_loss_coeff, aux_loss, aux_loss_name,
                                                          reduce_group, reduce_group_has_dp, valid_token_count)
