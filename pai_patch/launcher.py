"""The processes of a training job never outlive the process that started them.

torchrun starts each worker in its own session, so when the agent dies (kill -9, node
loss, an OOM kill) nothing delivers a signal to the workers.  A worker blocked in a
collective then waits on peers that are gone, and its SIGTERM handler never runs because
the main thread is inside gloo/NCCL; it lingers as an orphan (parent pid 1) holding memory
and GPUs.  A daemon thread notices the re-parenting and ends the process.

One level down, megatron-core's ``torch_dist`` save forks writer processes; a worker killed
mid-save left them behind, blocked for good on a result queue nobody reads.  Every process
a worker forks gets ``PR_SET_PDEATHSIG`` so the kernel ends it with its parent.
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


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking_parent:  # the parent died before the request was in place
        os._exit(1)


def forked_children_die_with_this_process() -> bool:
    """From now on every process this one forks is SIGKILLed by the kernel when this one dies (Linux).

    Only forks (``os.fork``, multiprocessing's "fork"): ``subprocess`` children are not touched,
    unless started with ``preexec_fn``, which runs Python's at-fork hooks.
    """
    global _prctl
    if sys.platform != "linux":
        return False
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
        os.register_at_fork(before=_remember_forking_parent, after_in_child=_die_with_parent)
    return True
