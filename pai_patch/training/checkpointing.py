"""Training checkpoints: torch_dist (megatron-core dist_checkpointing), atomic, resumable.

Layout is Megatron-LM's (``iter_0000100/`` + its tracker file, :mod:`pai_patch.checkpoint_dir`) so
other Megatron tools can read it, with four guarantees the original lacks:

* the optimizer, LR scheduler, RNG states and data position are saved, so a resumed run
  continues bit for bit;
* an iteration directory is written under a temporary name and renamed when complete,
  then the tracker file is replaced atomically — a kill at any point leaves the previous
  checkpoint as ``latest``;
* a ``COMPLETE`` marker listing every file with its size and CRC-32 (pai_patch/convert/marker.py)
  is verified before loading, here and by every other reader, so a damaged checkpoint is
  reported by name instead of loading wrong;
* one run at a time writes a save directory: rank 0 of the job holds an OS lock on ``LOCK``
  in it for the run's life (released by the kernel when the process dies, so never stale).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from pai_patch.convert.marker import (MARKER, CheckpointError, describe_files, gather, merge_shares, verify_marker,
                                     warn_unverified, world, write_marker)
from pai_patch.checkpoint_dir import TRACKER, iteration_dir, latest_iteration
from pai_patch.utils import fsync_dir, fsync_tree, write_text_atomic

log = logging.getLogger(__name__)

LOCK = ".run.lock"
#: the training setting that reads checkpoints without checking them
VERIFY_OFF = "checkpoint.verify=false"
CHECKPOINT_VERSION = 3.0


def is_training_checkpoint(root: str | Path) -> bool:
    """True for a save dir of this trainer (optimizer state included), not a converted one."""
    iteration = latest_iteration(root)
    return iteration is not None and (iteration_dir(root, iteration) / MARKER).is_file()


def _iteration_of(path: Path) -> int | None:
    try:
        return int(path.name[len("iter_"):])
    except ValueError:
        return None


def complete_iterations(root: str | Path) -> list[int]:
    """Iterations under ``root`` that carry a completeness marker, oldest first."""
    found = [(_iteration_of(p), p) for p in Path(root).glob("iter_*") if (p / MARKER).is_file()]
    return sorted(i for i, _ in found if i is not None)


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


def uses_distributed_optimizer(optimizer) -> bool:  # noqa: ANN001
    """Whether megatron's distributed optimizer (alone or in a chain) holds the optimizer state."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(isinstance(o, DistributedOptimizer) for o in parts)


def optimizer_format(optimizer, requested: str) -> str:  # noqa: ANN001
    """The format the optimizer state is saved in: ``requested`` for megatron's distributed optimizer,
    ``model_space`` for a regular one (its state has the parameters' shapes: loads at any layout)."""
    return requested if uses_distributed_optimizer(optimizer) else "model_space"


def _state(model_chunks, optimizer, scheduler, *, is_loading: bool, extra: dict[str, Any],
           sharding: str) -> dict[str, Any]:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    rank, world = dist.get_rank(), dist.get_world_size()
    state = _model_state(model_chunks)
    # kept nested: virtual-pipeline chunks reuse local names (``decoder.layers.0``), so merging would drop one
    models = dict(state)
    metadata = {"distrib_optim_sharding_type": sharding} if sharding != "model_space" else {}
    state["optimizer"] = optimizer.sharded_state_dict(models, is_loading=is_loading, metadata=metadata)
    state["opt_param_scheduler"] = scheduler.state_dict()
    state["rng_state"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    state["checkpoint_version"] = CHECKPOINT_VERSION
    state.update(extra)
    return state


def _agree(local: bool) -> bool:
    """True on every rank when any rank says True."""
    if world()[1] == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@dataclass(frozen=True)
class _Failure:
    """One rank's failed save step: the disk hint (may be empty), the reason, and the ranks the
    error blames — itself, or for torch's CheckpointException the ranks it lists (torch reports
    another rank's failed write on the coordinator, and an empty list on the other ranks)."""

    hint: str
    reason: str
    blamed: tuple[int, ...]


class _RankFailures(Exception):
    """A save step failed on some ranks; raised on every rank with each failed rank's ``_Failure``."""

    def __init__(self, failures: dict[int, _Failure]) -> None:
        super().__init__("; ".join(f"rank {r}: {f.reason}" for r, f in failures.items()))
        self.failures = failures


def _failure(err: BaseException, root: Path) -> _Failure:
    listed = getattr(err, "failures", None)  # torch.distributed.checkpoint's CheckpointException
    if isinstance(listed, dict):
        causes = [c[0] if isinstance(c, tuple) else c for c in listed.values()]
        reason = f"{type(causes[0]).__name__}: {_one_line(causes[0])}" if causes else _one_line(err)
        return _Failure(_disk_hint(err, root), reason, tuple(sorted(listed)))
    return _Failure(_disk_hint(err, root), _one_line(err), (world()[0],))


def _on_all_ranks(step: Callable[[], Any], root: Path) -> Any:
    """Run ``step`` here, agree with every rank on how it went, return its local result.

    A step one rank fails while the others succeed (disk full or read-only on one node, a
    rank-0-only write) would otherwise leave the others waiting in the next collective for a
    rank that already gave up; after this exchange all ranks raise the same ``_RankFailures``."""
    result, failure = None, None
    try:
        result = step()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - torch's CheckpointException is a BaseException
        failure = _failure(err, root)
    failures = {rank: f for rank, f in enumerate(gather(failure)) if f is not None}
    if failures:
        raise _RankFailures(failures)
    return result


def _write_state(state: dict[str, Any], directory: Path, root: Path) -> None:
    """megatron-core's ``dist_checkpointing.save``, step by step, each step agreed on by all ranks.

    Rank 0 alone writes ``common.pt`` and ``metadata.json``, and torch's sharded write ends
    in collectives; megatron-core's own ``save`` runs these back to back, so one rank's failed
    write leaves the others blocked in the next collective.  Same files, same order."""
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.serialization import (
        get_default_save_common_strategy,
        get_default_save_sharded_strategy,
    )
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess

    sharded_strategy, common_strategy = get_default_save_sharded_strategy(), get_default_save_common_strategy()
    sharded, common = save_preprocess(state)  # collectives only: every rank gets here
    _on_all_ranks(lambda: common_strategy.save_common(common, str(directory)), root)
    _on_all_ranks(lambda: sharded_strategy.save(sharded, str(directory)), root)
    config = CheckpointingConfig(sharded_strategy.backend, sharded_strategy.version)
    _on_all_ranks(lambda: world()[0] == 0 and save_config(config, str(directory)), root)


def _save_error(final: Path, root: Path, failures: dict[int, _Failure]) -> CheckpointError:
    """One message for every rank: the rank(s) whose write failed, why (the most specific
    reason and disk hint any rank reported), and which checkpoint stays latest."""
    kept = latest_iteration(root)
    kept_text = f"{iteration_dir(root, kept)} is kept as latest" if kept is not None else "no checkpoint kept"
    culprits = sorted({r for f in failures.values() for r in f.blamed}) or sorted(failures)
    explained = [f for f in failures.values() if f.blamed]  # torch's coordinator names the cause
    reason = (explained or list(failures.values()))[0].reason
    hints = [failures[r].hint for r in culprits if r in failures] + [f.hint for f in failures.values()]
    hint = next((h for h in hints if h), "")
    where = "" if world()[1] == 1 else f" on rank{'s' if len(culprits) > 1 else ''} {', '.join(map(str, culprits))}"
    return CheckpointError(f"saving {final} failed{where}{hint}: {reason}; {kept_text}")


def _broadcast(obj: Any) -> Any:
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _remove(path: Path) -> None:
    """Delete a directory by first renaming it out of the ``iter_*`` namespace (atomic), so
    a kill halfway through the delete never leaves a partial ``iter_*`` behind."""
    if not path.exists():
        return
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale(root: Path) -> None:
    """Temporary and half-deleted directories left by a killed run (never loadable by name).

    Only the holder of the directory's run lock may call this: another live run's save in
    progress is also a ``.tmp-iter_*``."""
    for stale in list(root.glob(".tmp-iter_*")) + list(root.glob(".trash-iter_*")):
        shutil.rmtree(stale, ignore_errors=True)


#: descriptors holding a run lock in this process
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (megatron's checkpoint writers, data workers): close the run lock's descriptor.

    flock belongs to the open file, which a fork shares: a writer orphaned by a killed run
    would otherwise keep the directory locked against its resume."""
    for fd in _HELD_LOCKS:
        os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def _flock(fd: int, root: Path) -> None:
    """``flock(LOCK_EX)`` on ``fd``, the open ``root/LOCK``; else close it and name the run holding it."""
    path = root / LOCK
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown PID (starting)"
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise CheckpointError(f"{path}: cannot lock the save directory ({err.strerror})") from None
        raise CheckpointError(f"{root}: in use by another training run (PID {holder}, holding {path}); wait for "
                              "it to finish or stop it, or use another output directory") from None


def _take_lock(root: Path) -> int:
    """An open descriptor holding ``flock(LOCK_EX)`` on ``root/LOCK``, which records our PID and host.

    flock belongs to the open file, so the kernel drops it when this process dies, however."""
    path = root / LOCK
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot create the run lock ({err.strerror})") from None
    _flock(fd, root)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD_LOCKS.add(fd)
    return fd


def _on_rank0(step: Callable[[], Any]) -> Any:
    """Run ``step`` on rank 0 alone and raise its CheckpointError on every rank.

    The save directory is shared by every node under DLC, so its lock is the job's, not each
    process's; the other ranks wait for rank 0's verdict instead of one of them giving up while
    the others block in the next collective."""
    result, problem = None, None
    if world()[0] == 0:
        try:
            result = step()
        except CheckpointError as err:
            problem = str(err)
    problem = _broadcast(problem)
    if problem:
        raise CheckpointError(problem)
    return result


def refuse_if_in_use(root: str | Path) -> None:
    """Stop at once, before the model is built or a checkpoint loaded, when another run holds ``root``.

    Writes nothing (the lock itself is taken once the datasets open, :func:`lock_save_dir`)."""
    root = Path(root)

    def probe() -> None:
        try:
            fd = os.open(root / LOCK, os.O_RDWR)
        except OSError:  # no lock file yet (or none we may open): lock_save_dir reports what matters
            return
        _flock(fd, root)
        os.close(fd)  # releases it

    _on_rank0(probe)


def lock_save_dir(root: str | Path) -> Callable[[], None]:
    """Make this job the only writer of ``root``, then remove what killed runs left; returns the release.

    Rank 0 of the job takes the lock and every rank raises its verdict (:func:`_on_rank0`).
    Stale temporaries are removed only under the lock."""
    root = Path(root)

    def take() -> int:
        taken = _take_lock(root)
        _clean_stale(root)
        return taken

    fd = _on_rank0(take)

    def release() -> None:
        if fd is not None:
            _HELD_LOCKS.discard(fd)
            os.close(fd)
    return release


def _one_line(err: BaseException) -> str:
    """megatron-core/torch report write failures as multi-line tracebacks: keep the last line."""
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        text = repr(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _disk_hint(err: BaseException, root: Path) -> str:
    """Why a save failed, when the cause is the disk: full, over quota or a file-size limit."""
    code = getattr(err, "errno", None) or getattr(err.__cause__, "errno", None)
    text = str(err)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "quota" in text.lower():
        return " (disk full or over quota)"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if code == errno.EFBIG or "File too large" in text or limit != resource.RLIM_INFINITY:
            return f" (file size limit reached: ulimit -f allows {limit} bytes per file)"
    except (ImportError, ValueError, OSError):
        pass
    try:
        free = shutil.disk_usage(root).free
        if free < 64 << 20:
            return f" (disk full: {free >> 20} MiB free on {root})"
    except OSError:
        pass
    return ""


def save_checkpoint(root: str | Path, iteration: int, model_chunks, optimizer, scheduler, *,
                    consumed_samples: int, world_size: int, model_layout: dict[str, Any],
                    optimizer_format_requested: str = "dp_reshardable", keep_last: int | None = None) -> Path:
    """Write ``iter_N`` atomically, then point the tracker at it, then apply retention.

    The files go to a uniquely named ``.tmp-iter_N-<token>`` directory (an orphaned writer
    of a killed run can never write into a later attempt's), are checksummed into
    ``COMPLETE.json``, fsynced, renamed to ``iter_N``; only then is the tracker replaced.
    Every step ends with all ranks agreeing on its outcome, so a failure on any rank (disk
    full, quota, permission) makes every rank remove the temporary directory and raise the
    same CheckpointError naming the failed rank; the previous checkpoint stays ``latest``."""
    root = Path(root)
    final = iteration_dir(root, iteration)
    rank = world()[0]
    previous = latest_iteration(root)
    # a rerun that resumed at its last iteration must not rewrite the checkpoint it loaded
    if _agree(rank == 0 and previous == iteration and (final / MARKER).is_file()):
        log.info("checkpoint %s already saved; not rewriting it", final)
        return final
    token = _broadcast(uuid.uuid4().hex[:12] if rank == 0 else None)
    tmp = root / f".tmp-{final.name}-{token}"

    def make_tmp() -> None:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()

    def commit(files: dict[str, dict[str, int]]) -> None:
        if rank == 0:
            write_marker(tmp, files)
            fsync_tree(tmp)
            _remove(final)  # a stale iter_N of a killed run (renamed, tracker not yet updated)
            os.replace(tmp, final)
            fsync_dir(root)
            write_text_atomic(root / TRACKER, f"{iteration}\n")

    try:
        _on_all_ranks(make_tmp, root)
        sharding = optimizer_format(optimizer, optimizer_format_requested)
        extra = {"iteration": iteration, "consumed_samples": consumed_samples, "world_size": world_size,
                 "optimizer_format": sharding, "model_layout": model_layout}
        state = _on_all_ranks(lambda: _state(model_chunks, optimizer, scheduler, is_loading=False, extra=extra,
                                             sharding=sharding), root)
        _write_state(state, tmp, root)
        files = merge_shares(gather(_on_all_ranks(lambda: describe_files(tmp, *world()), root)))
        _on_all_ranks(lambda: commit(files), root)
    except _RankFailures as err:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(final, root, err.failures) from None
    if rank == 0 and keep_last:
        _apply_retention(root, keep_last)
    if world()[1] > 1:
        dist.barrier()
    return final


def _apply_retention(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints up to the tracker's; never the tracker's own."""
    latest = latest_iteration(root)
    if latest is None:
        return
    done = [i for i in complete_iterations(root) if i <= latest]
    for old in done[:-keep_last]:
        if old != latest:
            _remove(iteration_dir(root, old))


def _materialize_optimizer_state(optimizer) -> None:  # noqa: ANN001
    """torch's Adam creates its state lazily; the distributed optimizer needs it to exist to
    describe what it will load (TE/Apex optimizers pre-create it), so take megatron-core's
    zero-gradient warm-up step, whose effect the loaded state then overwrites."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if hasattr(opt, "_init_optimizer_states_with_dummy_values") and inner is not None and not inner.state:
            opt._init_optimizer_states_with_dummy_values()


def _check_compatible(directory: Path, template: dict[str, Any]) -> None:
    """Name the first model tensor the checkpoint lacks or holds at another shape."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    saved = dist_checkpointing.load_tensors_metadata(str(directory))
    wanted = [v for k, v in template.items() if k.startswith("model")]
    for tensor in nested_values(wanted):
        if not isinstance(tensor, ShardedTensor):
            continue
        have = saved.get(tensor.key)
        if have is None:
            raise CheckpointError(f"{directory}: no tensor {tensor.key!r}; the checkpoint was saved for another "
                                  "model (family, size or layout) than this run's")
        if tuple(have.global_shape) != tuple(tensor.global_shape):
            raise CheckpointError(f"{directory}: tensor {tensor.key!r} has shape {tuple(have.global_shape)}, this "
                                  f"model expects {tuple(tensor.global_shape)}; the checkpoint was saved for another "
                                  "model or size")


def _check_same_optimizer_kind(directory: Path, saved_format: str | None, optimizer) -> None:  # noqa: ANN001
    """Refuse a checkpoint saved with the distributed optimizer into a run without it, and the reverse.

    The distributed optimizer saves flat shards of the grad buffer, a regular one per-parameter
    state: megatron-core cannot load either into the other and fails deep inside its loader.
    Checkpoints that predate the recorded ``optimizer_format`` are not checked.
    """
    if saved_format is None:
        return
    saved = saved_format != "model_space"
    this = uses_distributed_optimizer(optimizer)
    if saved != this:
        raise CheckpointError(
            f"{directory}: its optimizer state was saved {'with' if saved else 'without'} the distributed optimizer, "
            f"which this run {'uses' if this else 'does not use'}; resume with parallel.distributed_optimizer="
            f"{str(saved).lower()} (recipes: do={str(saved).lower()}), or start from its weights only "
            "(checkpoint.load=<that run's checkpoint dir>, checkpoint.finetune=true)")


def _layout(layout: dict[str, Any]) -> str:
    return " ".join(f"{k.upper()}={v}" for k, v in layout.items() if v is not None)


def load_checkpoint(root: str | Path, model_chunks, optimizer, scheduler, *, world_size: int,
                    model_layout: dict[str, Any], verify: bool = True) -> dict[str, Any]:
    """Resume everything from the tracker's iteration; returns iteration and consumed samples.

    ``verify=False`` (``checkpoint.verify=false``) skips the marker and CRC check, with a warning."""
    from megatron.core import dist_checkpointing

    iteration = latest_iteration(root)
    if iteration is None:
        raise CheckpointError(f"{root}: no {TRACKER}; nothing to resume from")
    directory = iteration_dir(root, iteration)
    try:
        if verify:
            verify_marker(directory)
        else:
            warn_unverified(directory, VERIFY_OFF)
    except CheckpointError as err:
        others = [i for i in complete_iterations(root) if i != iteration]
        hint = (f"; other checkpoints here: {', '.join(iteration_dir(root, i).name for i in others)} "
                f"(write one's iteration into {Path(root) / TRACKER} to resume from it)") if others else ""
        raise CheckpointError(f"{err} (resuming from {Path(root) / TRACKER} = {iteration}){hint}") from None
    _materialize_optimizer_state(optimizer)
    common = dist_checkpointing.load_common_state_dict(str(directory))
    _check_same_optimizer_kind(directory, common.get("optimizer_format"), optimizer)
    # checkpoints written before the format was recorded used fully_reshardable
    sharding = common.get("optimizer_format", optimizer_format(optimizer, "fully_reshardable"))
    saved_layout = common.get("model_layout")
    if sharding == "dp_reshardable" and saved_layout is not None and saved_layout != model_layout:
        raise CheckpointError(
            f"{directory}: its distributed-optimizer state was saved as dp_reshardable at {_layout(saved_layout)}, "
            f"which resumes at another DP size but not at {_layout(model_layout)}; resume at the saved layout and "
            "save with checkpoint.optimizer_format=fully_reshardable to change it, or start from its weights only "
            "(checkpoint.load=<that run's checkpoint dir>, checkpoint.finetune=true)")
    template = _state(model_chunks, optimizer, scheduler, is_loading=True, extra={}, sharding=sharding)
    same_world = common.get("world_size") == world_size
    if not same_world:
        template.pop("rng_state")  # RNG states are per rank; a new layout starts its own
    _check_compatible(directory, template)
    try:
        loaded = dist_checkpointing.load(template, str(directory))
    except Exception as err:  # noqa: BLE001 - megatron-core's errors are multi-line; name the checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{directory}: cannot load into this run ({type(err).__name__}: {first})") from err
    for key, chunk in zip(_model_state(model_chunks), model_chunks):
        unwrap(chunk).load_state_dict(loaded[key])
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if same_world:
        _set_rng_state(loaded["rng_state"])
    log.info("resumed from %s", directory)
    return {"iteration": int(common["iteration"]), "consumed_samples": int(common["consumed_samples"])}
