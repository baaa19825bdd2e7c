"""Checkpoint crash-safety at file level (no training): marker/CRC verification names the file,
retention never deletes what the tracker points to, a failed save keeps the previous
checkpoint and leaves no temporary directory, a kill between rename and tracker update is
harmless, and stale temporary directories never count as checkpoints; a resume that switches the
distributed optimizer on or off is refused in one line (the slow test trains for it)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from pai_patch.training import checkpointing as ck
from pai_patch.utils import write_text_atomic


@pytest.fixture
def fake_save(monkeypatch):
    """megatron-core's write replaced by a writer of two small files (contents from ``payload``),
    still run through the save's agreement step so a failure takes the real error path."""
    calls = {"fail": None, "payload": b"x" * 1000}

    def save(state, directory):  # noqa: ANN001
        if calls["fail"] is not None:
            Path(directory, "__0_0.distcp").write_bytes(b"partial")
            raise calls["fail"]
        Path(directory, "__0_0.distcp").write_bytes(calls["payload"] + str(state["iteration"]).encode())
        Path(directory, "common.pt").write_bytes(b"common")

    monkeypatch.setattr(ck, "_write_state", lambda state, directory, root: ck._on_all_ranks(
        lambda: save(state, directory), root))
    monkeypatch.setattr(ck, "_state", lambda *a, extra, **k: dict(extra))
    return calls


def _save(root: Path, iteration: int, keep_last: int | None = None) -> Path:
    return ck.save_checkpoint(root, iteration, [], None, None, consumed_samples=iteration * 4, world_size=1,
                              model_layout={"tp": 1, "pp": 1}, keep_last=keep_last)


def test_save_writes_verified_checkpoint_and_tracker(tmp_path, fake_save):
    final = _save(tmp_path, 2)
    assert final == tmp_path / "iter_0000002"
    ck.verify_marker(final)
    assert ck.latest_iteration(tmp_path) == 2
    assert not list(tmp_path.glob(".tmp-*"))
    marker = (final / ck.MARKER).read_text()
    assert '"crc32"' in marker and "__0_0.distcp" in marker


@pytest.mark.parametrize("damage,expected", [
    ("delete", "__0_0.distcp: missing from checkpoint"),
    ("truncate", "__0_0.distcp: 10 bytes, expected 1001; the file is corrupt"),
    ("flip", "__0_0.distcp: CRC-32 "),
    ("marker", "no COMPLETE.json; the checkpoint was not completely written"),
    ("garbled-marker", "COMPLETE.json: unreadable completeness marker"),
    ("rmdir", "no such checkpoint directory"),
])
def test_verify_names_the_missing_or_corrupt_file(tmp_path, fake_save, damage, expected):
    final = _save(tmp_path, 2)
    shard = final / "__0_0.distcp"
    if damage == "delete":
        shard.unlink()
    elif damage == "truncate":
        shard.write_bytes(b"0123456789")
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[5] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "marker":
        (final / ck.MARKER).unlink()
    elif damage == "garbled-marker":
        (final / ck.MARKER).write_text("{not json")
    else:
        import shutil

        shutil.rmtree(final)
    with pytest.raises(ck.CheckpointError, match=expected.replace("(", r"\(")) as err:
        ck.verify_marker(final)
    assert "\n" not in str(err.value)


def test_load_error_names_tracker_and_older_checkpoints(tmp_path, fake_save):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    (tmp_path / "iter_0000004" / "common.pt").write_bytes(b"COMMON")  # same size, other bytes
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(tmp_path, [], None, None, world_size=1, model_layout={"tp": 1, "pp": 1})
    text = str(err.value)
    assert "common.pt: CRC-32" in text and "= 4)" in text and "other checkpoints here: iter_0000002" in text


def test_resume_with_verify_off_reads_unchecked_and_warns(tmp_path, fake_save, capsys):
    """checkpoint.verify=false: the damaged file is not reported by the check (the loader then
    meets it), and one warning line says the check was skipped."""
    _save(tmp_path, 2)
    (tmp_path / "iter_0000002" / "common.pt").write_bytes(b"COMMON")  # same size, other bytes
    with pytest.raises(Exception) as err:  # noqa: PT011 - whatever megatron-core makes of the fake files
        ck.load_checkpoint(tmp_path, [], None, None, world_size=1, model_layout={"tp": 1, "pp": 1}, verify=False)
    assert "CRC-32" not in str(err.value)
    assert capsys.readouterr().err == (f"warning: checkpoint.verify=false: reading {tmp_path / 'iter_0000002'} "
                                       "without checking its completeness marker and checksums; a damaged "
                                       "checkpoint loads wrong\n")


@pytest.mark.parametrize("error,hint", [
    (OSError(errno.ENOSPC, "No space left on device"), " (disk full or over quota)"),
    (OSError(errno.EFBIG, "File too large"), " (file size limit reached"),
    (RuntimeError("Worker failure: unexpected pos 704 vs 598"), ""),
])
def test_failed_save_keeps_previous_and_cleans_up(tmp_path, fake_save, error, hint):
    _save(tmp_path, 2)
    fake_save["fail"] = error
    with pytest.raises(ck.CheckpointError) as err:
        _save(tmp_path, 4)
    text = str(err.value)
    assert text.startswith(f"saving {tmp_path / 'iter_0000004'} failed{hint}")
    assert text.endswith(f"{tmp_path / 'iter_0000002'} is kept as latest")
    assert ck.latest_iteration(tmp_path) == 2
    assert not (tmp_path / "iter_0000004").exists()
    assert not list(tmp_path.glob(".tmp-*"))
    ck.verify_marker(tmp_path / "iter_0000002")


def test_base_exception_from_torch_is_reported(tmp_path, fake_save):
    """torch.distributed.checkpoint raises CheckpointException, a BaseException."""
    from torch.distributed.checkpoint.api import CheckpointException

    fake_save["fail"] = CheckpointException("write", {0: (RuntimeError("Worker failure: boom"), None)})
    with pytest.raises(ck.CheckpointError, match="saving .*iter_0000002 failed"):
        _save(tmp_path, 2)
    assert ck.latest_iteration(tmp_path) is None


def test_kill_between_rename_and_tracker_update(tmp_path, fake_save, monkeypatch):
    """iter_4 renamed into place but the tracker still says 2: resuming uses 2; saving 4 again
    replaces the stale directory; retention never removes the tracker's checkpoint."""
    _save(tmp_path, 2)

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(errno.EIO, "simulated crash before the tracker update")

    monkeypatch.setattr(ck, "write_text_atomic", killed)
    with pytest.raises(ck.CheckpointError):
        _save(tmp_path, 4)
    monkeypatch.setattr(ck, "write_text_atomic", write_text_atomic)
    assert ck.latest_iteration(tmp_path) == 2
    assert (tmp_path / "iter_0000004" / ck.MARKER).is_file()  # complete, but not latest
    fake_save["payload"] = b"new"
    _save(tmp_path, 4, keep_last=1)
    assert ck.latest_iteration(tmp_path) == 4
    assert (tmp_path / "iter_0000004" / "__0_0.distcp").read_bytes() == b"new4"
    assert not (tmp_path / "iter_0000002").exists()
    assert not list(tmp_path.glob(".trash-*"))


def test_retention_keeps_tracker_checkpoint_when_newer_stale_dirs_exist(tmp_path, fake_save):
    for i in (2, 4, 6, 8):
        _save(tmp_path, i)
    (tmp_path / ck.TRACKER).write_text("6\n")  # iter_8 is a leftover newer than latest
    ck._apply_retention(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == ["iter_0000006", "iter_0000008"]
    ck._apply_retention(tmp_path, 1)
    assert (tmp_path / "iter_0000006").is_dir()


def test_resave_of_the_loaded_iteration_is_skipped(tmp_path, fake_save):
    final = _save(tmp_path, 4)
    before = {p.name: p.stat().st_mtime_ns for p in final.iterdir()}
    fake_save["fail"] = OSError(errno.EIO, "must not be called")
    assert _save(tmp_path, 4) == final
    assert {p.name: p.stat().st_mtime_ns for p in final.iterdir()} == before


def test_stale_temporary_dirs_are_removed_and_never_latest(tmp_path, fake_save):
    (tmp_path / ".tmp-iter_0000006-deadbeef").mkdir(parents=True)
    (tmp_path / ".tmp-iter_0000006-deadbeef" / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / ".trash-iter_0000002-cafe").mkdir()
    assert ck.complete_iterations(tmp_path) == []
    _save(tmp_path, 2)
    assert (tmp_path / ".tmp-iter_0000006-deadbeef").is_dir(), "a save without the run lock removed a temp"
    release = ck.lock_save_dir(tmp_path)
    release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.LOCK, "iter_0000002", ck.TRACKER]


_HOLDER = """
import sys, time
from pai_patch.training.checkpointing import lock_save_dir
lock_save_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_second_run_on_a_save_dir_stops_naming_the_holder_until_it_dies(tmp_path):
    """Another process (another run of the job) holds the directory: this one stops at once with
    one line naming the directory and the holder's PID, and leaves the holder's save in progress
    alone; once the holder is SIGKILLed the lock is free (the kernel dropped it)."""
    import subprocess
    import sys

    live_save = tmp_path / ".tmp-iter_0000004-0123456789ab"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        live_save.mkdir()
        with pytest.raises(ck.CheckpointError) as err:
            ck.lock_save_dir(tmp_path)
        text = str(err.value)
        assert text.startswith(f"{tmp_path}: in use by another training run (PID {holder.pid} on ")
        assert "\n" not in text
        assert live_save.is_dir()
        with pytest.raises(ck.CheckpointError) as early:  # the trainer's check before it builds anything
            ck.refuse_if_in_use(tmp_path)
        assert str(early.value) == text
    finally:
        holder.kill()
        holder.wait()
    ck.refuse_if_in_use(tmp_path)
    release = ck.lock_save_dir(tmp_path)
    assert not live_save.exists()  # its writer is gone: now it is stale
    assert (tmp_path / ck.LOCK).read_text().startswith(f"{os.getpid()} on ")
    release()


def test_the_early_check_writes_nothing(tmp_path):
    ck.refuse_if_in_use(tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()


_FORKING_HOLDER = """
import os, sys, time
from pai_patch.training.checkpointing import lock_save_dir
lock_save_dir(sys.argv[1])
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


def test_a_forked_child_of_a_killed_run_does_not_keep_the_lock(tmp_path):
    """megatron's checkpoint writers are forked from the training process and outlive its kill -9
    until their write ends: they must not keep the directory locked against the resume."""
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", _FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        ck.lock_save_dir(tmp_path)()
    finally:
        os.kill(child, signal.SIGKILL)


def test_checkpoint_error_is_a_one_line_cli_error(tmp_path):
    from pai_patch.cli import CliError

    (tmp_path / ck.TRACKER).write_text("seven\n")
    with pytest.raises(CliError, match="expected an iteration number or 'release', found 'seven'"):
        ck.latest_iteration(tmp_path)
    assert os.path.basename(ck.TRACKER) == "latest_checkpointed_iteration.txt"


def test_every_rank_reports_the_rank_whose_write_failed(tmp_path, monkeypatch):
    """torch's sharded write blames rank 1 on the coordinator (rank 0) and nobody on rank 1; both
    ranks then raise the same line naming rank 1, with rank 1's own disk hint."""
    from torch.distributed.checkpoint.api import CheckpointException

    monkeypatch.setattr(ck, "world", lambda: (0, 2))
    on_rank0 = ck._failure(CheckpointException("write", {1: (RuntimeError("Worker failure: pos 704"), None)}),
                           tmp_path)
    assert on_rank0.blamed == (1,) and on_rank0.reason == "RuntimeError: Worker failure: pos 704"
    on_rank1 = ck._Failure(" (file size limit reached: ulimit -f allows 1048576 bytes per file)",
                           "CheckpointException ranks:dict_keys([])", ())
    text = str(ck._save_error(tmp_path / "iter_0000004", tmp_path, {0: on_rank0, 1: on_rank1}))
    assert text == (f"saving {tmp_path / 'iter_0000004'} failed on rank 1 (file size limit reached: ulimit -f "
                    "allows 1048576 bytes per file): RuntimeError: Worker failure: pos 704; no checkpoint kept")


def test_rank0_only_write_failure_is_named(tmp_path, monkeypatch):
    """common.pt / the marker are rank 0's alone: its failure is reported as rank 0's on every rank."""
    monkeypatch.setattr(ck, "world", lambda: (1, 2))
    failure = ck._Failure(" (disk full or over quota)", "[Errno 28] No space left on device", (0,))
    text = str(ck._save_error(tmp_path / "iter_0000002", tmp_path, {0: failure}))
    assert text.startswith(f"saving {tmp_path / 'iter_0000002'} failed on rank 0 (disk full or over quota): ")


def test_distributed_optimizer_switch_is_refused_in_one_line_before_megatron_loads(tmp_path, monkeypatch):
    """A checkpoint of a distributed-optimizer run resumed by a run with a regular optimizer (here none):
    one line naming the checkpoint, both settings and the key to set, read from megatron's real common
    state; megatron's loader is never reached (the reverse switch: test_train_without_do_then_with_do)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME

    def write(state, directory, root):  # noqa: ANN001 - only the common state and megatron's config file
        torch.save(state, Path(directory) / COMMON_STATE_FNAME)
        save_config(CheckpointingConfig("torch_dist"), str(directory))

    monkeypatch.setattr(ck, "_write_state", write)
    monkeypatch.setattr(ck, "_state", lambda *a, extra, **k: dict(extra))
    monkeypatch.setattr(ck, "optimizer_format", lambda optimizer, requested: requested)  # saved by a DO run
    _save(tmp_path, 3)
    monkeypatch.undo()
    monkeypatch.setattr(dist_checkpointing, "load", lambda *a, **k: pytest.fail("megatron's loader was called"))
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(tmp_path, [], None, None, world_size=1, model_layout={"tp": 1, "pp": 1})
    assert str(err.value) == (
        f"{tmp_path / 'iter_0000003'}: its optimizer state was saved with the distributed optimizer, which this "
        "run does not use; resume with parallel.distributed_optimizer=true (recipes: do=true), or start from its "
        "weights only (checkpoint.load=<that run's checkpoint dir>, checkpoint.finetune=true)")


@pytest.mark.slow
def test_train_without_do_then_with_do_is_refused_in_one_line(corpus_prefix, tmp_path):
    """The real trainer: one step without the distributed optimizer, then a resume that turns it on."""
    from tests.conftest import run_cli

    args = ("train", "model.family=qwen2_5", "model.size=tiny", f"data.train_path={corpus_prefix}",
            f"output_dir={tmp_path}", "train.seq_length=64", "train.global_batch_size=2", "train.micro_batch_size=2")
    run_cli(*args, "train.train_iters=1")
    result = run_cli(*args, "train.train_iters=2", "parallel.distributed_optimizer=true", check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and lines == [
        f"error: {tmp_path / 'checkpoint' / 'iter_0000001'}: its optimizer state was saved without the distributed "
        "optimizer, which this run uses; resume with parallel.distributed_optimizer=false (recipes: do=false), or "
        "start from its weights only (checkpoint.load=<that run's checkpoint dir>, checkpoint.finetune=true)"], \
        result.stderr[-3000:]
    assert "Traceback" not in result.stderr
