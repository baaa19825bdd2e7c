"""kill -9 a ``torchrun --nproc_per_node 2`` (gloo, DP=2) run: the whole job (node loss) during a
checkpoint save, and one worker between steps; resume each time under torchrun."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from harness import COUNTS, audit, launch_process, losses, metric_lines, tracker, train_args

pytestmark = [pytest.mark.slow, pytest.mark.dist]
ITERS = 6
EXTRA = ("checkpoint.save_interval=2",)


def _workers(agent: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{agent}/task/{agent}/children").read_text().split()]
    except OSError:
        return []


def test_kill9_torchrun(references, work, data_prefix):
    # DP=2 reproduces the single-process run bit for bit (per-token loss over the global batch),
    # so the uninterrupted reference is the single-process run of the same job
    ref = references.get("interval-2", ITERS, *EXTRA)
    out = work / "kill-torchrun"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
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
            target = (tracker(root) or 0) + 2 if what == "group-in-save" else None
            while run.poll() is None and time.monotonic() < deadline:
                if what == "group-in-save" and (root / f"iter_{target:07d}").exists() is False and \
                        any(root.glob(f".tmp-iter_{target:07d}-*")):
                    time.sleep(rng.uniform(0.0, 0.4))
                    break
                if what == "worker-at-step" and metric_lines(out) - start_lines >= 1:
                    time.sleep(rng.uniform(0.0, 0.3))
                    break
                time.sleep(0.005)
            assert run.poll() is None, f"torchrun ended before the kill:\n{run.text()[-3000:]}"
            tmp = set(root.glob(".tmp-iter_*"))
            if what == "group-in-save":
                run.kill_group()  # the node is gone: agent and both workers
            else:
                workers = _workers(run.pid)
                assert workers, "no torchrun workers found"
                import os
                import signal

                os.kill(rng.choice(workers), signal.SIGKILL)
            rc = run.wait(180)
            run.kill_group()
            assert rc != 0
            COUNTS.kills += 1
            COUNTS.torchrun_kills += 1
            COUNTS.kills_in_save += bool(tmp & set(root.glob(".tmp-iter_*")))
            assert not audit(root, None)
        start_iteration = tracker(root) or 0
        run = launch_process(argv, out / "log", torchrun=True)
        rc = run.wait(600)
        run.kill_group()
        assert rc == 0, run.text()[-3000:]
    finally:
        for run in runs:
            run.kill_group()
    want = {i: v[0] for i, v in losses(ref).items()}
    got = {i: v[-1] for i, v in losses(out).items()}
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
