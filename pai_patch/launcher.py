"""The processes of a training job never outlive the process that started them.

torchrun starts each worker in its own session, so when the agent dies (kill -9, node
loss, an OOM kill) nothing delivers a signal to the workers.  A worker blocked in a
collective then waits on peers that are gone, and its SIGTERM handler never runs because
the main thread is inside gloo/NCCL; it lingers as an orphan (parent pid 1) holding memory
and GPUs.  A daemon thread notices the re-parenting and ends the process.

One level down, megatron-core's ``torch_dist`` save forks writer processes and spawns a
queue server; a worker killed mid-save left the writers blocked for good on a result queue
nobody reads, and any kill after a save left the server.  Every process a worker starts for
itself gets ``PR_SET_PDEATHSIG`` so the kernel ends it with its parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
_forking_parent = 0
_prctl = None  # resolved before any fork: a forked child of a threaded process must not dlopen
_results_queue = None


def _exit_when_reparented(launcher_pid: int, poll_seconds: float) -> None:
    while os.getppid() == launcher_pid:
        time.sleep(poll_seconds)
    # os._exit: the main thread may be blocked inside a collective and would never unwind.
    print(f"error: the torchrun agent (pid {launcher_pid}) is gone; rank {os.environ.get('RANK', '?')} "
          "exits instead of waiting on peers that will never answer", file=sys.stderr, flush=True)
    os._exit(1)


def exit_with_launcher(poll_seconds: float = POLL_SECONDS) -> bool:
    """Under torchrun, end this process when the agent that started it dies; True if watching.

    Only under torchrun (``TORCHELASTIC_RUN_ID`` set): a plain ``python -m pai_patch train``
    may be detached on purpose (``nohup``, a closed terminal) and must keep running.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    watcher = threading.Thread(target=_exit_when_reparented, args=(os.getppid(), poll_seconds),
                               name="exit-with-launcher", daemon=True)
    watcher.start()
    return True


def _remember_forking_parent() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


def _die_with(parent: int) -> None:
    """In a new child: have the kernel SIGKILL it when ``parent`` dies."""
    prctl = _prctl or ctypes.CDLL(None, use_errno=True).prctl  # a spawned child starts without it
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def _die_with_forking_parent() -> None:
    _die_with(_forking_parent)


def _checkpoint_results_queue():
    """megatron's ``filesystem_async._get_write_results_queue``, served by a manager that dies with us.

    megatron starts a "spawn" ``multiprocessing.Manager`` for the queue at the first
    ``torch_dist`` save; a run killed after it (or ending in ``os._exit``) left that 200 MB
    server process behind for good.  Spawned processes run no at-fork hooks, so the manager's
    initializer makes the same kernel request.
    """
    import multiprocessing
    from multiprocessing.managers import SyncManager

    global _results_queue
    if _results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(_die_with, (os.getpid(),))
        _results_queue = manager.Queue()
    return _results_queue


def children_die_with_this_process() -> bool:
    """From now on the processes this one starts for itself die with it (Linux): every fork (``os.fork``,
    multiprocessing's "fork", megatron's checkpoint writers) and megatron's checkpoint queue server.

    ``subprocess`` children (other programs) are not touched, unless started with ``preexec_fn``,
    which runs Python's at-fork hooks.
    """
    global _prctl
    if sys.platform != "linux":
        return False
    if _prctl is None:
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
        os.register_at_fork(before=_remember_forking_parent, after_in_child=_die_with_forking_parent)
        filesystem_async._get_write_results_queue = _checkpoint_results_queue
    return True
