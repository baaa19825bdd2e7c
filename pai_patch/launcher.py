"""A torchrun worker never outlives its launcher.

torchrun starts each worker in its own session, so when the agent dies (kill -9, node
loss, an OOM kill) nothing delivers a signal to the workers.  A worker blocked in a
collective then waits on peers that are gone, and its SIGTERM handler never runs because
the main thread is inside gloo/NCCL; it lingers as an orphan (parent pid 1) holding memory
and GPUs.  A daemon thread notices the re-parenting and ends the process.
"""

from __future__ import annotations

import os
import sys
import threading
import time

POLL_SECONDS = 1.0


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
