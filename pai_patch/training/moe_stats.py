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
        self.experts: list[int] = []
        #: per MoE layer, this step's counts on the routing map's device (None until the layer runs):
        #: copying them to the host in the hook would stall the GPU once per layer, so it happens once a step
        self.counts: list[torch.Tensor | None] = []
        for chunk in model_chunks:
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    slot = len(self.counts)
                    self.experts.append(module.config.num_moe_experts)
                    self.counts.append(None)
                    module.register_forward_hook(self._hook(slot))

    def _hook(self, slot: int):  # noqa: ANN202
        def record(module, args, output) -> None:  # noqa: ANN001
            # Full activation recompute replays the router inside the backward pass: count the forward only
            if module.training and not _in_backward():
                tokens = output[1].sum(dim=0)
                self.counts[slot] = tokens if self.counts[slot] is None else self.counts[slot] + tokens

        return record

    def collect(self) -> dict[str, object]:
        """Reduced counts of this step (then reset); empty for dense models."""
        if not self.counts:
            return {}
        from megatron.core import parallel_state as ps

        stacked = torch.stack([torch.zeros(n, dtype=torch.float64) if c is None else c.to("cpu", torch.float64)
                               for n, c in zip(self.experts, self.counts)])
        self.counts = [None] * len(self.counts)
        dist.all_reduce(stacked, group=ps.get_data_parallel_group(with_context_parallel=True))
        if self.sequence_parallel:
            dist.all_reduce(stacked, group=ps.get_tensor_model_parallel_group())
        per_layer = stacked.round().long().tolist()
        load = stacked.sum(0)
        return {"moe/expert_tokens": per_layer,
                "moe/expert_load_max_over_mean": float(load.max() / load.mean().clamp(min=1e-9))}


def _in_backward() -> bool:
    """Whether autograd's engine is running a backward pass on this thread (torch has no public
    flag for it; the graph task id is -1 outside backward)."""
    return torch._C._current_graph_task_id() != -1
