"""Run megatron-core on a machine without CUDA (CPU tensors, gloo collectives).

megatron-core assumes a GPU in a few dozen places: ``torch.cuda.current_device()``,
``.cuda()``, factory calls with ``device="cuda"``, CUDA RNG state, streams and events.
Rather than forking megatron-core we redirect exactly those entry points, all listed
in :data:`CPU_PATCHES` with the reason for each, plus one torch-function mode that
maps any CUDA device argument to the CPU.  Everything is applied by :func:`apply`
and only when ``torch.cuda.is_available()`` is false, so the GPU path is untouched.
What a machine without Transformer Engine needs, GPU or not, is in :mod:`.no_te`.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Patch:
    """Replace ``module.attr`` (``attr`` may be dotted) with ``replacement``."""

    module: str
    attr: str
    replacement: Any
    reason: str

    def apply(self) -> None:
        owner = importlib.import_module(self.module)
        *path, name = self.attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, self.replacement)


class _NullStream:
    """Stands in for ``torch.cuda.Stream``/``Event``: CPU work is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "record_event":  # the MoE alltoall dispatcher later calls .synchronize() on it
            return lambda *args, **kwargs: _NullStream()
        return lambda *args, **kwargs: (0.0 if name == "elapsed_time" else None)

    def __enter__(self) -> "_NullStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _returning(value: Any) -> Callable[..., Any]:
    """A fresh function per patch: torch.compile's trace rules reject one object under two names."""

    def stub(*args: Any, **kwargs: Any) -> Any:
        return value() if callable(value) else value

    return stub


def _noop() -> Callable[..., None]:
    return _returning(None)


def _zero() -> Callable[..., int]:
    return _returning(0)


def _null_context() -> Callable[..., contextlib.AbstractContextManager]:
    return _returning(contextlib.nullcontext)


def _to_cpu_device(device: Any) -> Any:
    if isinstance(device, int) and not isinstance(device, bool):
        return CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return CPU
    return device


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and ints, and ``.cuda()``) to the CPU; ``type()`` names CUDA types.

    megatron-core builds scalars for loss scaling, grad-norm reductions, causal
    masks and token counters with a literal ``device="cuda"``; catching them at the
    torch-function level is one rule instead of a patch per call site.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron dispatches on type() strings such as 'torch.cuda.BFloat16Tensor'
            # (optimizer main-param setup, grad clipping); report CPU tensors under those names.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _to_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def _host_tensor() -> Callable[..., Any]:
    """``maybe_move_tensor_to_cpu`` for tensors already on the CPU: still honour ``as_numpy``."""

    def move(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
        return tensor.numpy() if as_numpy and torch.is_tensor(tensor) else tensor

    return move


def _first_dim_gather() -> Callable[..., torch.Tensor]:
    """megatron's ``_gather_along_first_dim``, with ranks of different row counts as gloo can run it.

    The MoE dispatcher gathers each TP rank's routed tokens (expert TP, e.g. TP=2 with EP=4),
    and those counts differ; gloo all-gathers equal shapes only, so rows are padded to the
    longest and trimmed back.  Equal counts use megatron's single collective, as before.
    """

    def gather(input_: torch.Tensor, group: Any, output_split_sizes: list[int] | None = None,
               use_global_buffer: bool = False) -> torch.Tensor:
        world = group.size()
        if world == 1:
            return input_
        if output_split_sizes is None:
            output = input_.new_empty(input_.shape[0] * world, *input_.shape[1:])
            torch.distributed.all_gather_into_tensor(output, input_.contiguous(), group=group)
            return output
        padded = input_.new_zeros(max(output_split_sizes), *input_.shape[1:])
        padded[: input_.shape[0]] = input_
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded, group=group)
        return torch.cat([part[:rows] for part, rows in zip(parts, output_split_sizes)])

    return gather


def _first_dim_reduce_scatter() -> Callable[..., torch.Tensor]:
    """megatron's ``_reduce_scatter_along_first_dim``, with unequal pieces as gloo can run it.

    The backward of the gather above; gloo has no reduce-scatter over a list of unequal
    tensors, so the whole tensor is all-reduced and each rank keeps its own rows.
    """

    def reduce_scatter(input_: torch.Tensor, group: Any, input_split_sizes: list[int] | None = None,
                       use_global_buffer: bool = False) -> torch.Tensor:
        world = group.size()
        if world == 1:
            return input_
        if input_split_sizes is None:
            output = input_.new_empty(input_.shape[0] // world, *input_.shape[1:])
            torch.distributed.reduce_scatter_tensor(output, input_.contiguous(), group=group)
            return output
        total = input_.contiguous().clone()
        torch.distributed.all_reduce(total, group=group)
        return total.split(input_split_sizes)[group.rank()].clone()

    return reduce_scatter


def _rng_get() -> Callable[..., torch.Tensor]:
    return _returning(torch.get_rng_state)


def _rng_set() -> Callable[..., None]:
    def set_state(state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        torch.set_rng_state(state)

    return set_state


def _seed() -> Callable[[int], None]:
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    return manual_seed


CPU_PATCHES: tuple[Patch, ...] = (
    Patch("torch.cuda", "current_device", _returning(CPU), "tensors are placed on current_device(); make it the CPU"),
    Patch("torch.cuda", "set_device", _noop(), "launchers pin a GPU per local rank; nothing to pin on CPU"),
    Patch("torch.cuda", "synchronize", _noop(), "CPU kernels run synchronously"),
    Patch("torch.cuda", "empty_cache", _noop(), "no caching allocator on CPU"),
    Patch("torch.cuda", "Stream", _NullStream, "MoE dispatchers and DDP overlap create side streams"),
    Patch("torch.cuda", "Event", _NullStream, "timers and overlap code record CUDA events"),
    Patch("torch.cuda", "current_stream", _NullStream, "callers wait on / record to the current stream"),
    Patch("torch.cuda", "default_stream", _NullStream, "callers wait on the default stream"),
    Patch("torch.cuda", "stream", _null_context(), "`with torch.cuda.stream(s)` scopes become no-ops"),
    Patch("torch.cuda", "memory_allocated", _zero(), "memory reports query the CUDA allocator"),
    Patch("torch.cuda", "max_memory_allocated", _zero(), "memory reports query the CUDA allocator"),
    Patch("torch.cuda", "memory_reserved", _zero(), "memory reports query the CUDA allocator"),
    Patch("torch.cuda", "max_memory_reserved", _zero(), "memory reports query the CUDA allocator"),
    Patch("torch.cuda", "manual_seed", _seed(), "the RNG tracker seeds the CUDA generator; seed the CPU one"),
    Patch("torch.cuda", "get_rng_state", _rng_get(), "RNG tracker and checkpoints read the CUDA generator state"),
    Patch("torch.cuda", "set_rng_state", _rng_set(), "checkpoint resume restores the CUDA generator state"),
    Patch("torch.cuda.nvtx", "range_push", _noop(), "NVTX ranges need the CUDA profiler library"),
    Patch("torch.cuda.nvtx", "range_pop", _noop(), "NVTX ranges need the CUDA profiler library"),
    Patch("megatron.core.tensor_parallel.random", "_get_cuda_rng_state", _rng_get(),
          "the tracker forks CUDA RNG states for dropout; fork the CPU generator instead"),
    Patch("megatron.core.tensor_parallel.random", "_set_cuda_rng_state", _rng_set(),
          "the tracker restores CUDA RNG states; restore the CPU generator instead"),
    Patch("megatron.core.transformer.moe.token_dispatcher", "maybe_move_tensor_to_cpu", _host_tensor(),
          "it converts only CUDA tensors, so on CPU the alltoall split sizes stay tensors and gloo rejects them"),
    Patch("megatron.core.tensor_parallel.mappings", "_gather_along_first_dim", _first_dim_gather(),
          "MoE with expert TP all-gathers unequal token counts, which gloo cannot"),
    Patch("megatron.core.tensor_parallel.mappings", "_reduce_scatter_along_first_dim", _first_dim_reduce_scatter(),
          "its backward reduce-scatters unequal pieces, which gloo cannot"),
)

_mode: CudaToCpuMode | None = None


def apply() -> bool:
    """Apply every CPU patch once; returns True when they were needed and applied."""
    global _mode
    if torch.cuda.is_available():
        return False
    if _mode is None:
        for patch in CPU_PATCHES:
            patch.apply()
        _mode = CudaToCpuMode()
        _mode.__enter__()
    return True
