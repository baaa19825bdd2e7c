"""Training checkpoints: torch_dist (megatron-core dist_checkpointing), atomic, resumable.

Layout is Megatron-LM's (``iter_0000100/`` + ``latest_checkpointed_iteration.txt``) so
other Megatron tools can read it, with three guarantees the original lacks:

* the optimizer, LR scheduler, RNG states and data position are saved, so a resumed run
  continues bit for bit;
* an iteration directory is written under a temporary name and renamed when complete,
  then the tracker file is replaced atomically — a kill at any point leaves the previous
  checkpoint as ``latest``;
* a ``COMPLETE`` marker listing every file with its size is verified before loading, so a
  damaged checkpoint is reported by name instead of loading wrong.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pai_patch.utils import fsync_dir, write_text_atomic

log = logging.getLogger(__name__)

TRACKER = "latest_checkpointed_iteration.txt"
MARKER = "COMPLETE.json"
CHECKPOINT_VERSION = 3.0


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the run."""


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def read_tracker(root: str | Path) -> int | None:
    """The latest complete iteration under ``root`` (None when there is none)."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{tracker}: expected an iteration number or 'release', found {text!r}") from None


def is_training_checkpoint(root: str | Path) -> bool:
    """True for a save dir of this trainer (optimizer state included), not a converted one."""
    iteration = read_tracker(root)
    return iteration is not None and (iteration_dir(root, iteration) / MARKER).is_file()


def write_marker(directory: Path) -> None:
    files = {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}
    (directory / MARKER).write_text(json.dumps({"files": files}, indent=1))


def verify_marker(directory: Path) -> None:
    marker = directory / MARKER
    if not marker.is_file():
        raise CheckpointError(f"{directory}: no {MARKER}; the checkpoint was not completely written")
    expected = json.loads(marker.read_text())["files"]
    for name, size in expected.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from checkpoint {directory}")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, expected {size}; the file is corrupt")


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    return {
        "random": random.getstate(),
        "np": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside a DDP wrapper: checkpoints use the model's own names."""
    return getattr(model, "module", model)


def _model_state(model_chunks: list[torch.nn.Module]) -> dict[str, Any]:
    if len(model_chunks) == 1:
        return {"model": unwrap(model_chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _state(model_chunks, optimizer, scheduler, *, is_loading: bool, extra: dict[str, Any]) -> dict[str, Any]:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    rank, world = dist.get_rank(), dist.get_world_size()
    state = _model_state(model_chunks)
    merged: dict[str, Any] = {}
    for chunk_state in state.values():
        merged.update(chunk_state)
    # fully_reshardable: the distributed optimizer's state loads at any other DP/TP/PP layout
    state["optimizer"] = optimizer.sharded_state_dict(
        merged, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    state["opt_param_scheduler"] = scheduler.state_dict()
    state["rng_state"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    state["checkpoint_version"] = CHECKPOINT_VERSION
    state.update(extra)
    return state


def save_checkpoint(root: str | Path, iteration: int, model_chunks, optimizer, scheduler, *,
                    consumed_samples: int, world_size: int, keep_last: int | None = None) -> Path:
    """Write ``iter_N`` atomically, then point the tracker at it, then apply retention."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = iteration_dir(root, iteration)
    tmp = root / f".tmp-{final.name}"
    rank = dist.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    extra = {"iteration": iteration, "consumed_samples": consumed_samples, "world_size": world_size}
    state = _state(model_chunks, optimizer, scheduler, is_loading=False, extra=extra)
    dist_checkpointing.save(state, str(tmp))
    dist.barrier()
    if rank == 0:
        write_marker(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        write_text_atomic(root / TRACKER, f"{iteration}\n")
        if keep_last:
            _apply_retention(root, keep_last)
    dist.barrier()
    return final


def _apply_retention(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("iter_*") if (p / MARKER).is_file())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _materialize_optimizer_state(optimizer) -> None:  # noqa: ANN001
    """torch's Adam creates its state lazily; the distributed optimizer needs it to exist to
    describe what it will load (TE/Apex optimizers pre-create it), so take megatron-core's
    zero-gradient warm-up step, whose effect the loaded state then overwrites."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if hasattr(opt, "_init_optimizer_states_with_dummy_values") and inner is not None and not inner.state:
            opt._init_optimizer_states_with_dummy_values()


def load_checkpoint(root: str | Path, model_chunks, optimizer, scheduler, *, world_size: int
                    ) -> dict[str, Any]:
    """Resume everything from the tracker's iteration; returns iteration and consumed samples."""
    from megatron.core import dist_checkpointing

    iteration = read_tracker(root)
    if iteration is None:
        raise CheckpointError(f"{root}: no {TRACKER}; nothing to resume from")
    directory = iteration_dir(root, iteration)
    verify_marker(directory)
    _materialize_optimizer_state(optimizer)
    template = _state(model_chunks, optimizer, scheduler, is_loading=True, extra={})
    common = dist_checkpointing.load_common_state_dict(str(directory))
    same_world = common.get("world_size") == world_size
    if not same_world:
        template.pop("rng_state")  # RNG states are per rank; a new layout starts its own
    loaded = dist_checkpointing.load(template, str(directory))
    for key, chunk in zip(_model_state(model_chunks), model_chunks):
        unwrap(chunk).load_state_dict(loaded[key])
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if same_world:
        _set_rng_state(loaded["rng_state"])
    log.info("resumed from %s", directory)
    return {"iteration": int(common["iteration"]), "consumed_samples": int(common["consumed_samples"])}
