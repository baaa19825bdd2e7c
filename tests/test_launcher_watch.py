"""Processes of a training job end with their parent: a torchrun worker with its agent, a forked writer with its worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pai_patch.launcher import exit_with_launcher

ROOT = Path(__file__).resolve().parents[1]

# The "worker": watches its parent, then blocks the main thread in C like a rank stuck in gloo.
WORKER = """
import sys, threading
from pai_patch.launcher import exit_with_launcher
assert exit_with_launcher(poll_seconds=0.05)
open(sys.argv[1], "w").close()
threading.Event().wait()
"""
# The "agent": starts the worker in its own session, as torchrun does, and waits.
AGENT = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True,
                          stderr=open(sys.argv[3], "w"))
print(worker.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_parent_and_wait(argv: list[str], ready: Path, env: dict[str, str]) -> tuple[int, bool]:
    """Start ``argv`` (it prints its child's pid), wait until the child is ready, SIGKILL the parent;
    the parent's pid and whether the child was still alive 10 s later."""
    parent = subprocess.Popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **env}, start_new_session=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists() and _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        return parent.pid, _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_worker_exits_when_its_torchrun_agent_is_killed(tmp_path):
    ready, stderr = tmp_path / "ready", tmp_path / "worker.err"
    agent, outlived = _kill_parent_and_wait([AGENT, WORKER, str(ready), str(stderr)], ready,
                                            {"TORCHELASTIC_RUN_ID": "test", "RANK": "1"})
    assert not outlived, "the worker outlived its agent"
    assert f"torchrun agent (pid {agent}) is gone; rank 1 exits" in stderr.read_text()


def test_outside_torchrun_a_detached_run_is_left_alone(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert exit_with_launcher() is False


# A process that forks a helper (as megatron's checkpoint save forks its writers), then waits.
FORKING_PARENT = """
import os, sys, time
from pai_patch.launcher import children_die_with_this_process
assert children_die_with_this_process()
child = os.fork()
if child == 0:
    open(sys.argv[1], "w").close()
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


def test_a_forked_helper_dies_with_the_process_that_forked_it(tmp_path):
    ready = tmp_path / "ready"
    _, outlived = _kill_parent_and_wait([FORKING_PARENT, str(ready)], ready, {})
    assert not outlived, "the forked helper outlived its parent"


# A process that makes megatron's checkpoint results queue (its first torch_dist save does), then waits.
QUEUE_OWNER = """
import multiprocessing, sys, time
from pai_patch.launcher import children_die_with_this_process
assert children_die_with_this_process()
from megatron.core.dist_checkpointing.strategies import filesystem_async
queue = filesystem_async._get_write_results_queue()
queue.put("result")
assert queue.get() == "result" and filesystem_async._get_write_results_queue() is queue
[server] = multiprocessing.active_children()
print(server.pid, flush=True)
open(sys.argv[1], "w").close()
time.sleep(600)
"""


def test_megatrons_checkpoint_queue_server_dies_with_the_run(tmp_path):
    ready = tmp_path / "ready"
    _, outlived = _kill_parent_and_wait([QUEUE_OWNER, str(ready)], ready, {})
    assert not outlived, "megatron's queue server outlived the run"
