"""kill -9 a ``torchrun --nproc_per_node 2`` (gloo, DP=2) run: the whole job (node loss) during a
checkpoint save, and one worker between steps; resume each time under torchrun."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from harness import (COUNTS, audit, children_of, first_losses, fresh_dir, last_losses, launch_process, metric_lines,
                     outlived, tracker, train_args)

pytestmark = [pytest.mark.slow, pytest.mark.dist]
ITERS = 8
EXTRA = ("checkpoint.save_interval=2",)


def _workers(agent: int) -> list[int]:
    """The worker processes torchrun started (each in its own session)."""
    return [pid for pid in children_of(agent) if b"pai_patch" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _records(out: Path) -> list[dict]:
    path, records = out / "metrics.jsonl", []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"iteration": 0, "loss": None, "partial": True})
    return records


def test_kill9_torchrun(references, work, data_prefix):
    # DP=2 reproduces the single-process run bit for bit (per-token loss over the global batch),
    # so the uninterrupted reference is the single-process run of the same job
    ref = references.get("interval-2-8", ITERS, *EXTRA)
    want = first_losses(ref)
    out = fresh_dir(work / "kill-torchrun")
    root = out / "checkpoint"
    argv = train_args(out, data_prefix, ITERS, *EXTRA)
    rng = random.Random(20240909)
    plan = ["group-in-save", "worker-at-step"]
    runs = []
    try:
        for what in plan:
            start_lines = metric_lines(out)
            run = launch_process(argv, out / "log", torchrun=True)
            runs.append(run)
            deadline = time.monotonic() + 300
            target = 4  # group: during the save of iteration 4 (2 is saved); worker: after 4 is saved
            while run.poll() is None and time.monotonic() < deadline:
                if what == "group-in-save" and (root / f"iter_{target:07d}").exists() is False and \
                        any(root.glob(f".tmp-iter_{target:07d}-*")):
                    time.sleep(rng.uniform(0.0, 0.15))
                    break
                if what == "worker-at-step" and (tracker(root) or 0) >= target and \
                        metric_lines(out) - start_lines >= 3:
                    break
                time.sleep(0.005)
            assert run.poll() is None, f"torchrun ended before the kill:\n{run.text()[-3000:]}"
            tmp = set(root.glob(".tmp-iter_*"))
            if what == "group-in-save":
                workers = _workers(run.pid)
                assert workers, "no torchrun workers found"
                for pid in [run.pid, *workers]:  # the node is gone: agent and both workers at once
                    os.kill(pid, signal.SIGKILL)
            else:
                workers = _workers(run.pid)
                assert workers, "no torchrun workers found"
                os.kill(rng.choice(workers), signal.SIGKILL)
            rc = run.wait(180)
            assert rc != 0
            # with the agent gone no one signals a worker blocked in a collective: it must end itself
            orphans = outlived(str(out))
            run.kill_group()
            assert not orphans, f"{what}: workers outlived their torchrun agent: {orphans}\n{run.text()[-3000:]}"
            COUNTS.kills += 1
            COUNTS.torchrun_kills += 1
            COUNTS.kills_in_save += bool(tmp & set(root.glob(".tmp-iter_*")))
            assert not audit(root, None)
            resumed = [r for r in _records(out)[start_lines:] if not r.get("partial")]
            if runs[:-1] and resumed:  # a resumed run that logged steps before its kill
                COUNTS.resumes += 1
                COUNTS.resumes_exact += all(abs(r["loss"] - want[r["iteration"]]) <= 1e-6 for r in resumed)
        start_iteration = tracker(root) or 0
        assert 0 < start_iteration < ITERS, f"nothing to resume from (tracker {start_iteration})"
        run = launch_process(argv, out / "log", torchrun=True)
        rc = run.wait(600)
        run.kill_group()
        assert rc == 0, run.text()[-3000:]
    finally:
        for run in runs:
            run.kill_group()
    got = last_losses(out)
    assert set(got) == set(want)
    worst = max(abs(got[i] - want[i]) for i in want)
    exact = got == want
    COUNTS.resumes += 1
    COUNTS.resumes_exact += worst <= 1e-6
    COUNTS.notes.append(f"torchrun DP=2 resume from iteration {start_iteration}: "
                        f"{'bitwise equal' if exact else f'max |loss diff| {worst:.2e}'} to the uninterrupted run")
    assert worst <= 1e-6
    assert tracker(root) == ITERS
    assert not audit(root, None)
    COUNTS.kills_survived += len(plan)


_HOLDER = """
import sys, time
from pai_patch.training.checkpointing import lock_save_dir
lock_save_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_job_on_a_directory_another_run_holds_stops_on_every_rank(work, data_prefix):
    """The lock is the job's (rank 0 takes it): on a directory another run holds, every rank of a
    torchrun job stops with rank 0's one line, none left waiting in a collective."""
    import subprocess
    import sys

    out = fresh_dir(work / "torchrun-locked")
    root = out / "checkpoint"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = launch_process(train_args(out, data_prefix, 4), out / "log", torchrun=True)
        try:
            rc = run.wait(240)
        finally:
            run.kill_group()
    finally:
        holder.kill()
        holder.wait()
    text = run.text()
    errors = sorted(line for line in text.splitlines() if line.startswith("error: "))
    assert rc != 0, text[-3000:]
    assert len(errors) == 2 and errors[0] == errors[1], text[-3000:]
    assert errors[0].startswith(f"error: {root}: in use by another training run (PID {holder.pid} on "), errors
    assert not (out / "metrics.jsonl").exists()
