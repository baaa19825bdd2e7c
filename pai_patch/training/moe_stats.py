"""Per-expert token counts: how many tokens each routed expert received this step.

Counted with a forward hook on every megatron-core ``TopKRouter`` (its routing map is
[tokens, experts]); summed over the data-parallel ranks (and the TP ranks when sequence
parallelism splits tokens over them).  Load imbalance is what MoE training runs watch
next to the auxiliary loss.  With PP>1 the counts cover the MoE layers of this rank's
pipeline stage.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ExpertTokenCounter:
    def __init__(self, model_chunks: list[torch.nn.Module], sequence_parallel: bool) -> None:
        from megatron.core.transformer.moe.router import TopKRouter

        self.sequence_parallel = sequence_parallel
        self.counts: list[torch.Tensor] = []
        for chunk in model_chunks:
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    slot = len(self.counts)
                    self.counts.append(torch.zeros(module.config.num_moe_experts, dtype=torch.float64))
                    module.register_forward_hook(self._hook(slot))

    def _hook(self, slot: int):  # noqa: ANN202
        def record(module, args, output) -> None:  # noqa: ANN001
            if module.training:
                self.counts[slot] += output[1].sum(dim=0).to("cpu", torch.float64)

        return record

    def collect(self) -> dict[str, object]:
        """Reduced counts of this step (then reset); empty for dense models."""
        if not self.counts:
            return {}
        from megatron.core import parallel_state as ps

        stacked = torch.stack(self.counts)
        dist.all_reduce(stacked, group=ps.get_data_parallel_group(with_context_parallel=True))
        if self.sequence_parallel:
            dist.all_reduce(stacked, group=ps.get_tensor_model_parallel_group())
        for c in self.counts:
            c.zero_()
        per_layer = stacked.round().long().tolist()
        load = stacked.sum(0)
        return {"moe/expert_tokens": per_layer,
                "moe/expert_load_max_over_mean": float(load.max() / load.mean().clamp(min=1e-9))}
