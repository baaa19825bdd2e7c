"""Disk full during a save, a corrupt or truncated dataset, a dataset too short for one sample,
and a diverging run: each stops with one clear line naming the file (or iteration and rank),
and a save that cannot complete keeps the previous checkpoint as latest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from harness import audit, error_line, first_losses, fresh_dir, last_losses, stopped_run, tracker, train_args

pytestmark = pytest.mark.slow


def test_disk_full_during_save_keeps_previous_checkpoint(zygote, references, work, data_prefix):
    ref = references.get("every-step", 10, "checkpoint.save_interval=1")
    out = work / "disk-full"
    root = out / "checkpoint"
    common = stopped_run(zygote, out, data_prefix, 2)
    # every file the save writes is capped at 1 MiB (the model shard is ~6 MiB): the disk is "full"
    run = zygote.launch(common, out / "log2", fsize=1 << 20)
    line = error_line(run)
    assert "iter_0000004 failed (file size limit reached" in line, line
    assert "iter_0000002 is kept as latest" in line, line
    assert tracker(root) == 2
    assert not list(root.glob(".tmp-iter_*")), "the failed save left its temporary directory"
    assert not (root / "iter_0000004").exists()
    assert not audit(root, ref / "checkpoint")
    # with space again, the run resumes from iteration 2 and matches the uninterrupted run
    assert zygote.launch(common, out / "log3").wait() == 0
    assert last_losses(out) == first_losses(ref)


def _copy_dataset(prefix: str, dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix + suffix, dest / f"ds{suffix}")
    return str(dest / "ds")


@pytest.mark.parametrize("damage,expected", [
    ("idx-truncated", "ds.idx: 30 bytes, shorter than the 34-byte idxmap header"),
    ("idx-magic", "ds.idx: wrong magic"),
    ("idx-cut-arrays", "document indices need"),
    ("bin-truncated", "ds.bin has 1000 bytes but"),
])
def test_corrupt_dataset_names_the_file(zygote, work, data_prefix, damage, expected):
    out = fresh_dir(work / f"data-{damage}")
    prefix = _copy_dataset(data_prefix, out / "data")
    idx, binf = Path(prefix + ".idx"), Path(prefix + ".bin")
    raw = idx.read_bytes()
    if damage == "idx-truncated":
        idx.write_bytes(raw[:30])
    elif damage == "idx-magic":
        idx.write_bytes(b"NOTANIDX\x00" + raw[9:])
    elif damage == "idx-cut-arrays":
        idx.write_bytes(raw[: len(raw) // 2])
    else:
        binf.write_bytes(binf.read_bytes()[:1000])
    run = zygote.launch(train_args(out, prefix, 4), out / "log")
    line = error_line(run)
    assert expected in line, line
    assert "data.train_path" in line
    assert not (out / "checkpoint").exists()


def test_dataset_too_short_for_one_sample(zygote, work):
    from pai_patch.data.indexed import IndexedWriter

    out = fresh_dir(work / "data-short")
    (out / "data").mkdir()
    prefix = str(out / "data" / "short")
    writer = IndexedWriter(prefix + ".bin", np.uint16)
    writer.add_document(np.arange(5, 15, dtype=np.uint16), [10])  # 10 tokens; one sample needs 33
    writer.finalize(prefix + ".idx")
    run = zygote.launch(train_args(out, prefix, 4), out / "log")
    line = error_line(run)
    assert "short" in line and "tokens" in line, line


@pytest.mark.parametrize("budget", [0, 1])
def test_nan_guard_names_iteration_and_rank(zygote, work, data_prefix, budget):
    out = fresh_dir(work / f"nan-{budget}")
    argv = train_args(out, data_prefix, 8, "optim.lr=1e12", "optim.min_lr=1e12", "optim.clip_grad=0",
                      "optim.lr_decay_style=constant", f"train.nan_skip_budget={budget}")
    run = zygote.launch(argv, out / "log")
    line = error_line(run)
    assert "non-finite loss at iteration" in line and "on rank(s) 0" in line, line
    assert f"skip budget {budget} used up" in line
    if budget:
        assert "batch skipped (1/1)" in run.text()
