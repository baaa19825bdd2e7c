"""Bad input found at run time (dataset, tokenizer, an incompatible or damaged checkpoint): one
``error:`` line, exit status 2, exactly as listed in tests/test_badinput_cli.py / docs/errors.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import error_line, first_losses, fresh_dir, last_losses, stopped_run, tracker, train_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_badinput_cli import RUNTIME_CASES, normalize, substitute  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scratch(work: Path, zygote, data_prefix) -> Path:
    base = fresh_dir(work / "badinput")
    (base / "empty").mkdir()
    llama = fresh_dir(base / "llama")
    argv = ["train", "model.family=llama2", "model.size=tiny", "train.seq_length=32", "train.global_batch_size=4",
            "train.micro_batch_size=2", "train.train_iters=1", f"data.train_path={data_prefix}", f"output_dir={llama}"]
    assert zygote.launch(argv, llama / "log").wait() == 0
    return base


@pytest.mark.parametrize("what,extra,message", RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_runtime_bad_input(what, extra, message, scratch, zygote, data_prefix):
    out = fresh_dir(scratch / f"run-{abs(hash(what))}")
    extras = substitute(extra, scratch).split()
    data = [e for e in extras if e.startswith("data.train_path=")]
    argv = train_args(out, data[0].split("=", 1)[1] if data else data_prefix, 2,
                      *[e for e in extras if not e.startswith("data.train_path=")])
    line = error_line(zygote.launch(argv, out / "log"))
    assert normalize(line, scratch) == message


def test_damaged_latest_checkpoint_is_named_and_never_loaded(zygote, references, work, data_prefix):
    """Flip bytes (same size) in the latest checkpoint: the CRC check names the file and the
    older checkpoint; pointing the tracker at that one resumes exactly."""
    ref = references.get("every-step", 10, "checkpoint.save_interval=1")
    out = work / "damaged"
    root = out / "checkpoint"
    argv = stopped_run(zygote, out, data_prefix, 4)
    shard = root / "iter_0000004" / "__0_0.distcp"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 8] = bytes(8)
    shard.write_bytes(bytes(raw))
    line = error_line(zygote.launch(argv, out / "log2"))
    assert line.startswith(f"error: {shard}: CRC-32 "), line
    assert f"the file is corrupt (resuming from {root / 'latest_checkpointed_iteration.txt'} = 4)" in line
    assert "other checkpoints here: iter_0000002" in line
    (root / "latest_checkpointed_iteration.txt").write_text("2\n")
    assert zygote.launch(argv, out / "log3").wait() == 0
    assert last_losses(out) == first_losses(ref)
    # the damaged iter_4 was replaced by a sound save when the run passed iteration 4 again
    assert tracker(root) == 10
