"""Process groups: torchrun / PAI-DLC environments, gloo on CPU, and layout validation.

Validation runs before anything is built so that a layout that cannot work costs a
second, not a cluster allocation; each failure names the rule it breaks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from pai_patch.launcher import exit_with_launcher, children_die_with_this_process
from pai_patch.models.base import ModelSize, Runtime


class LayoutError(ValueError):
    """A parallel layout that cannot work, with the rule it breaks."""


@dataclass(frozen=True)
class Layout:
    world_size: int
    dp: int


def validate_layout(size: ModelSize, rt: Runtime, world_size: int, *, global_batch: int | None = None,
                    micro_batch: int | None = None, num_experts: int | None = None,
                    seq_length: int | None = None, for_training: bool = True) -> Layout:
    """Check every rule megatron-core would otherwise trip over deep inside model build.

    ``for_training=False`` (checkpoint conversion) skips the rules about how a run computes,
    such as MoE at TP>1 needing sequence parallelism, and keeps those about how weights shard.
    """

    def rule(ok: bool, message: str) -> None:
        if not ok:
            raise LayoutError(f"invalid parallel layout: {message}")

    for name in ("tp", "pp", "cp", "ep"):
        rule(getattr(rt, name) >= 1, f"{name.upper()} must be >= 1 (got {getattr(rt, name)})")
    model_parallel = rt.tp * rt.pp * rt.cp
    rule(world_size % model_parallel == 0,
         f"world size {world_size} must equal TP*PP*CP*DP = {rt.tp}*{rt.pp}*{rt.cp}*DP (not divisible by {model_parallel})")
    dp = world_size // model_parallel
    rule(size.num_attention_heads % rt.tp == 0,
         f"TP={rt.tp} must divide the attention heads ({size.num_attention_heads})")
    rule(size.num_query_groups % rt.tp == 0,
         f"TP={rt.tp} must divide the KV groups ({size.num_query_groups})")
    rule(not rt.sequence_parallel or rt.tp > 1, "sequence parallel (SP=true) requires TP > 1")
    if rt.cp > 1 and seq_length is not None:
        rule(seq_length % (2 * rt.cp) == 0, f"CP={rt.cp} requires the sequence length ({seq_length}) to divide by 2*CP")
    uneven = rt.pp0_layers is not None and rt.pp > 1  # MP_PP0_LAYERS is ignored at PP=1, as the seeds do
    if uneven:
        rest = size.num_layers - rt.pp0_layers
        rule(0 < rt.pp0_layers < size.num_layers and rest % (rt.pp - 1) == 0,
             f"MP_PP0_LAYERS={rt.pp0_layers}: the other {rest} layers must split evenly over PP-1={rt.pp - 1} stages")
    else:
        rule(size.num_layers % rt.pp == 0, f"PP={rt.pp} must divide the layers ({size.num_layers})")
    if rt.vp is not None:
        rule(rt.vp >= 1, f"VP must be >= 1 (got {rt.vp})")
        rule(rt.pp > 1, "virtual pipeline (MP_VP) requires PP > 1")
        if uneven:
            others = (size.num_layers - rt.pp0_layers) // (rt.pp - 1)
            rule(rt.pp0_layers % rt.vp == 0 and others % rt.vp == 0,
                 f"VP={rt.vp} must divide every stage's layers (first stage {rt.pp0_layers}, others {others})")
        else:
            rule(size.num_layers % (rt.pp * rt.vp) == 0,
                 f"PP*VP={rt.pp}*{rt.vp} must divide the layers ({size.num_layers})")
    if num_experts:
        rule(num_experts % rt.ep == 0, f"EP={rt.ep} must divide the routed experts ({num_experts})")
        rule(not for_training or rt.tp == 1 or rt.sequence_parallel,
             f"a mixture-of-experts model at TP={rt.tp} needs sequence parallel (SP=true)")
        rule((dp * rt.cp) % rt.ep == 0, f"EP={rt.ep} must divide DP*CP = {dp}*{rt.cp}")
    else:
        rule(rt.ep == 1, f"EP={rt.ep} needs a mixture-of-experts model")
    if global_batch is not None and micro_batch is not None:
        rule(global_batch % (micro_batch * dp) == 0,
             f"global batch {global_batch} must divide by micro batch * DP = {micro_batch}*{dp}")
    return Layout(world_size=world_size, dp=dp)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group() -> None:
    """Join the job torchrun started (or a one-process group); gloo without CUDA.

    On GPUs the group also gets gloo for CPU tensors: the loss reduction and checkpoint
    agreement exchange small host tensors, which NCCL alone rejects.
    """
    if dist.is_initialized():
        return
    children_die_with_this_process()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        exit_with_launcher()
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def init_model_parallel(rt: Runtime) -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=rt.tp,
        pipeline_model_parallel_size=rt.pp,
        virtual_pipeline_model_parallel_size=rt.vp,
        context_parallel_size=rt.cp,
        expert_model_parallel_size=rt.ep,
        expert_tensor_parallel_size=rt.etp,
    )


@contextlib.contextmanager
def model_parallel(rt: Runtime = Runtime()) -> Iterator[None]:
    """Process group + megatron parallel state for tools (inspection, conversion, tests).

    On a GPU, models initialise their weights on the device under megatron's CUDA RNG tracker,
    which has no states until it is seeded; the CPU path initialises on the host and needs none.
    """
    from megatron.core import parallel_state

    from pai_patch.patches import apply_patches

    apply_patches()
    owns_group = not dist.is_initialized()
    init_process_group()
    init_model_parallel(rt)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(1234)
    try:
        yield
    finally:
        parallel_state.destroy_model_parallel()
        if owns_group:
            dist.destroy_process_group()
