"""kill -9 tiny training runs at seeded random points (between steps, during a checkpoint save,
during start-up and resume), resume each time, and check that the resumed run reproduces an
uninterrupted run exactly and that no checkpoint directory left behind loads wrong."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from harness import (COUNTS, Run, audit, first_losses, fresh_dir, last_losses, launch_process, losses, metric_lines,
                     tracker, train_args)

pytestmark = pytest.mark.slow
SEED = 20240909


def _tmp_dirs(root: Path) -> set[str]:
    return {p.name for p in root.glob(".tmp-iter_*")} if root.exists() else set()


def _trigger(run: Run, mode: str, rng: random.Random, out: Path, timeout: float = 180) -> None:
    """Wait until the moment to kill ``run`` (or until it ends by itself)."""
    root = out / "checkpoint"
    before_tmp, before_lines = _tmp_dirs(root), metric_lines(out)
    steps = rng.randint(1, 3)
    deadline = time.monotonic() + timeout
    while run.poll() is None and time.monotonic() < deadline:
        if mode == "startup" and time.monotonic() - run.started > rng.uniform(0.5, 4.0):
            return
        if mode == "step" and metric_lines(out) - before_lines >= steps:
            time.sleep(rng.uniform(0.0, 0.3))
            return
        if mode == "save" and _tmp_dirs(root) - before_tmp:
            time.sleep(rng.uniform(0.0, 0.5))
            return
        time.sleep(0.005)


def _check_resumed_lines(out: Path, start_line: int, start_iteration: int, ref: dict[int, list[float]]) -> bool | None:
    """The losses a (resumed) run logged: continuing from the tracker, equal to the reference's."""
    lines = (out / "metrics.jsonl").read_text().splitlines()[start_line:] if (out / "metrics.jsonl").exists() else []
    import json

    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        return None
    assert records[0]["iteration"] == start_iteration + 1, (
        f"resumed at iteration {records[0]['iteration']}, but the tracker said {start_iteration}")
    return all(r["loss"] == ref[r["iteration"]][0] for r in records)


def kill_chain(launch, ref_out: Path, out: Path, argv: list[str], *, kills: int, rng: random.Random,
               modes: tuple[str, ...], iters: int) -> int:
    """Kill and resume until ``kills`` kills happened; returns the kills made (all survived)."""
    ref = losses(ref_out)
    root, ref_root = out / "checkpoint", ref_out / "checkpoint"
    made, old_runs = 0, []
    try:
        while True:
            start_line, start_iteration = metric_lines(out), tracker(root) or 0
            launched_tmp = _tmp_dirs(root)
            run = launch(argv, out / "log")
            if made < kills:
                mode = rng.choice(modes)
                _trigger(run, mode, rng, out)
            if run.poll() is None and made < kills:
                tmp_before = _tmp_dirs(root) - launched_tmp
                run.kill()
                made += 1
                COUNTS.kills += 1
                in_save = bool(tmp_before and _tmp_dirs(root) & tmp_before)
                COUNTS.kills_in_save += in_save
                old_runs.append(run)
                problems = audit(root, ref_root)
                assert not problems, f"after kill {made} ({mode}, in save: {in_save}): {problems}"
            else:
                rc = run.wait(300)
                assert rc == 0, f"run failed (rc {rc}):\n{run.text()[-3000:]}"
                assert "Traceback" not in run.text().split("\n")[-200:][-1]
            exact = _check_resumed_lines(out, start_line, start_iteration, ref)
            if start_iteration or made:
                if exact is not None:
                    COUNTS.resumes += 1
                    COUNTS.resumes_exact += exact
                    assert exact, f"resumed losses differ from the uninterrupted run (see {out / 'metrics.jsonl'})"
            if run.poll() == 0:
                break
    finally:
        for old in old_runs:
            old.kill_group()
    assert tracker(root) == iters
    assert last_losses(out) == first_losses(ref_out), "the finished run's losses differ from the uninterrupted run"
    assert not audit(root, ref_root)
    COUNTS.kills_survived += made
    return made


@pytest.mark.parametrize("name,iters,extra,kills,modes", [
    ("every-step", 10, ("checkpoint.save_interval=1", "checkpoint.keep_last=2"), 10, ("save", "save", "step", "startup")),
    ("interval-3", 12, ("checkpoint.save_interval=3",), 7, ("step", "save", "startup")),
])
def test_kill9_single_process(zygote, references, work, data_prefix, name, iters, extra, kills, modes):
    ref_extra = tuple(e for e in extra if not e.startswith("checkpoint.keep_last"))
    ref = references.get(name, iters, *ref_extra)
    out = fresh_dir(work / f"kill-{name}")
    argv = train_args(out, data_prefix, iters, *extra)
    made = kill_chain(zygote.launch, ref, out, argv, kills=kills, rng=random.Random(f"{SEED}-{name}"), modes=modes,
                      iters=iters)
    assert made == kills


def test_kill9_plain_process_during_save(zygote, references, work, data_prefix):
    """The same through a plain ``python -m pai_patch train`` process (no fork server); the
    resume runs from the fork server."""
    ref = references.get("every-step", 10, "checkpoint.save_interval=1")
    out = fresh_dir(work / "kill-plain")
    argv = train_args(out, data_prefix, 10, "checkpoint.save_interval=1", "checkpoint.keep_last=2")
    launches = []

    def launch(args: list[str], log: Path) -> Run:
        launches.append(args)
        return launch_process(args, log) if len(launches) == 1 else zygote.launch(args, log)

    made = kill_chain(launch, ref, out, argv, kills=1, rng=random.Random(SEED),
                      modes=("save",), iters=10)
    assert made == 1


def test_sigterm_saves_at_step_boundary_then_resumes_exactly(zygote, references, work, data_prefix):
    """Preemption: SIGTERM saves at the next step boundary and exits 0; the rerun resumes exactly.
    A second signal while the first is being handled exits at once (no save)."""
    import signal

    ref = references.get("every-step", 10, "checkpoint.save_interval=1")
    out = fresh_dir(work / "sigterm")
    root = out / "checkpoint"
    argv = train_args(out, data_prefix, 10, "checkpoint.save_interval=4")
    run = zygote.launch(argv, out / "log1")
    while metric_lines(out) < 1 and run.poll() is None:
        time.sleep(0.005)
    import os

    os.kill(run.pid, signal.SIGTERM)
    assert run.wait(120) == 0, run.text()[-3000:]
    stopped = tracker(root)
    assert stopped is not None and 1 <= stopped < 10
    assert f"iteration {stopped} (signal {int(signal.SIGTERM)})" in run.text()
    run = zygote.launch(argv, out / "log2")
    while metric_lines(out) < stopped + 1 and run.poll() is None:
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGTERM)
    os.kill(run.pid, signal.SIGTERM)
    rc = run.wait(120)
    assert rc in (0, 128 + signal.SIGTERM), run.text()[-3000:]
    if rc:
        assert "second signal" in run.text()
    assert not audit(root, ref / "checkpoint")
    assert zygote.launch(argv, out / "log3").wait(300) == 0
    assert last_losses(out) == first_losses(ref)


def test_second_run_on_a_live_runs_directory_stops_and_the_kill_frees_it(zygote, work, data_prefix):
    """Two runs on one output directory: the second stops at once with one line naming the
    directory and the first run's PID, before writing anything (its start-up clean-up would
    delete the first run's save in progress); after the first is SIGKILLed a rerun proceeds."""
    import socket

    from harness import error_line

    out = fresh_dir(work / "two-runs")
    root = out / "checkpoint"
    argv = train_args(out, data_prefix, 2000, "checkpoint.save_interval=1", "checkpoint.keep_last=2")
    first = zygote.launch(argv, out / "log1")
    try:
        while tracker(root) is None and first.poll() is None:
            time.sleep(0.01)
        assert first.poll() is None, first.text()[-3000:]
        before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
        second = zygote.launch(argv, out / "log2")
        line = error_line(second)
        assert "resumed from" not in second.text(), "the second run loaded a checkpoint before stopping"
        assert line.startswith(f"error: {root}: in use by another training run (PID {first.pid} on "
                               f"{socket.gethostname()}, holding {root / '.run.lock'})"), line
        assert first.poll() is None, "the second run disturbed the first"
        after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
        assert after["lock.json"] == before["lock.json"], "the second run rewrote the first one's lock.json"
        first.kill()
    finally:
        first.kill_group()
    resumed = tracker(root)
    rerun = zygote.launch([*argv, "train.exit_interval=1"], out / "log3")
    assert rerun.wait(300) == 0, rerun.text()[-3000:]
    assert tracker(root) == resumed + 1
    assert not audit(root, None)
