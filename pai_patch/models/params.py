"""Parameter counts from a model actually built (on the meta device), not from a formula."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pai_patch.models.base import ModelFamily, ModelSize, Runtime


def count_params(family: ModelFamily, size: ModelSize) -> dict[str, int]:
    """Total and per-token-active parameters of ``size`` built with megatron-core at TP=PP=1.

    Active = total minus the routed experts a token does not visit: in every MoE layer
    only ``topk`` of ``num_experts`` routed experts run.
    """
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from pai_patch.parallel import model_parallel

    rt = Runtime(seq_length=1, extra={"perform_initialization": False, "use_cpu_initialization": True})
    with model_parallel(rt), torch.device("meta"):
        model = family.build(size, rt)
        total = sum(p.numel() for p in model.parameters())
        inactive = routed_total = 0
        embedding = model.embedding.word_embeddings.weight.numel()
        for module in model.modules():
            if isinstance(module, MoELayer):
                cfg = module.config
                routed = sum(p.numel() for p in module.experts.parameters())
                routed_total += routed
                inactive += routed - routed * cfg.moe_router_topk // cfg.num_moe_experts
    # routed experts shard over EP (the rest over TP*PP): what a per-GPU memory estimate needs apart
    return {"params_total": total, "params_active": total - inactive, "params_embedding": embedding,
            "params_routed_experts": routed_total}


def info(family: ModelFamily, size_name: str | None) -> dict[str, Any]:
    size = family.size(size_name)
    counts = count_params(family, size)
    return {"family": family.name, "size": dataclasses.asdict(size), **counts,
            "params_total_b": round(counts["params_total"] / 1e9, 3),
            "params_active_b": round(counts["params_active"] / 1e9, 3)}
