"""One rank's checkpoint write fails while the other's succeeds (``torchrun --nproc_per_node 2``,
TP=2 so each rank writes its own shard): both ranks stop with the same one-line error naming
the failing rank, within a bounded time, and the previous checkpoint stays the latest."""

from __future__ import annotations

import shutil

import pytest

from harness import audit, fresh_dir, launch_process, tracker, train_args

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def test_one_rank_disk_full_fails_every_rank_without_hang(references, work, data_prefix):
    # the previous checkpoint: iteration 2 of the single-process reference (it loads at TP=2)
    ref = references.get("every-step", 10, "checkpoint.save_interval=1")
    out = fresh_dir(work / "rank-save-failure")
    root = out / "checkpoint"
    shutil.copytree(ref / "checkpoint" / "iter_0000002", root / "iter_0000002")
    (root / "latest_checkpointed_iteration.txt").write_text("2\n")
    argv = train_args(out, data_prefix, 4, "parallel.tp=2", "checkpoint.save_interval=2")
    # rank 1 may write no file over 1 MiB; its shard of iteration 4 is larger, rank 0's is not capped
    run = launch_process(argv, out / "log", torchrun=True, limit_rank=(1, 1 << 20))
    try:
        rc = run.wait(240)  # a rank left waiting in a collective would hit this and fail the test
    finally:
        run.kill_group()
    text = run.text()
    errors = sorted(line for line in text.splitlines() if line.startswith("error: "))
    assert rc != 0, text[-3000:]
    assert len(errors) == 2 and errors[0] == errors[1], text[-3000:]
    assert f"error: saving {root / 'iter_0000004'} failed on rank 1 (file size limit reached" in errors[0], errors
    assert f"{root / 'iter_0000002'} is kept as latest" in errors[0], errors
    assert "exitcode  : 2" in text, text[-3000:]
    assert tracker(root) == 2
    assert not (root / "iter_0000004").exists()
    assert not list(root.glob(".tmp-iter_*")), "the failed save left its temporary directory"
    assert not audit(root, None)
