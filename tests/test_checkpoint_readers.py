"""Every reader of a checkpoint (``convert mcore2hf``, ``generate``/``serve``, a fine-tune's
``checkpoint.load``) checks its completeness marker and CRC-32s first: a corrupt or half-written
checkpoint is refused in one line naming the iteration, the file and what failed, instead of
being exported or loaded wrong; ``--no-verify`` reads it anyway, after a warning.

The fast tests use converted checkpoints (hf2mcore writes the marker too); the slow ones a
trainer's save."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_convert_roundtrip import make_hf

from pai_patch.cli import main
from pai_patch.convert.marker import MARKER

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "pai_patch" / "assets" / "corpus" / "prompts.jsonl"
WARNING = "warning: --no-verify: reading "


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Qwen2.5 HF model and its torch_dist and legacy conversions."""
    root = tmp_path_factory.mktemp("readers")
    hf = make_hf("qwen2_5", root / "hf")
    out = {"hf": hf}
    for fmt in ("torch_dist", "legacy"):
        assert main(["convert", "hf2mcore", "--model", "qwen2_5", "--hf", str(hf), "--mcore", str(root / fmt),
                     "--format", fmt]) == 0
        out[fmt] = root / fmt
    return out


def flipped_copy(source: Path, copy: Path, pattern: str) -> Path:
    """A copy of checkpoint ``source`` with one byte flipped in the middle of its first ``pattern`` file
    (same size: only the CRC-32 can tell)."""
    shutil.copytree(source, copy)
    victim = sorted(copy.rglob(pattern))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    return victim


def mcore2hf(ckpt: Path, hf: Path, out: Path, *extra: str) -> int:
    return main(["convert", "mcore2hf", "--model", "qwen2_5", "--mcore", str(ckpt), "--hf", str(out),
                 "--source-hf", str(hf), *extra])


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("hf2mcore")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("fmt,pattern", [("torch_dist", "*.distcp"), ("legacy", "model_optim_rng.pt")])
def test_mcore2hf_refuses_a_flipped_byte_naming_the_file(converted, tmp_path, capsys, fmt, pattern):
    victim = flipped_copy(converted[fmt], tmp_path / "mc", pattern)
    capsys.readouterr()
    assert mcore2hf(tmp_path / "mc", converted["hf"], tmp_path / "back") == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {victim}: CRC-32 ") and "; the file is corrupt; release of " in line, line
    assert line.endswith(f"{tmp_path / 'mc'} not read (--no-verify reads it anyway)"), line
    assert not any(p.name.startswith((".back", "back")) for p in tmp_path.iterdir())


def test_mcore2hf_no_verify_exports_anyway_and_says_so(converted, tmp_path, capsys):
    flipped_copy(converted["torch_dist"], tmp_path / "mc", "*.distcp")
    capsys.readouterr()
    assert mcore2hf(tmp_path / "mc", converted["hf"], tmp_path / "back", "--no-verify") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: --no-verify")]
    assert warnings == [f"{WARNING}{tmp_path / 'mc' / 'release'} without checking its completeness marker and "
                        "checksums; a damaged checkpoint loads wrong"]
    assert (tmp_path / "back" / "config.json").is_file()


def test_a_missing_shard_is_one_line_with_or_without_the_check(converted, tmp_path, capsys):
    """Without the marker check, torch's reader raised a CheckpointException (a BaseException) past the CLI."""
    shutil.copytree(converted["torch_dist"], tmp_path / "mc")
    missing = sorted((tmp_path / "mc").rglob("*.distcp"))[0]
    missing.unlink()
    capsys.readouterr()
    assert mcore2hf(tmp_path / "mc", converted["hf"], tmp_path / "back") == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: {missing}: missing from checkpoint ")
    assert mcore2hf(tmp_path / "mc", converted["hf"], tmp_path / "back", "--no-verify") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith((WARNING, "mcore2hf"))]
    assert error_line("\n".join(err)) == f"error: {missing}: no such file or directory (ENOENT)"
    assert not (tmp_path / "back").exists()


def test_generate_refuses_a_corrupt_checkpoint(converted, tmp_path, capsys):
    victim = flipped_copy(converted["torch_dist"], tmp_path / "mc", "*.distcp")
    capsys.readouterr()
    rc = main(["generate", "--mcore", str(tmp_path / "mc"), "--family", "qwen2_5", "--input", str(PROMPTS),
               "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "2"])
    assert rc == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: {victim}: CRC-32 ")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.fixture(scope="module")
def trained(corpus_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The save directory of a 2-iteration tiny Qwen2.5 run."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("trained")
    run_cli("train", "model.family=qwen2_5", "model.size=tiny", "train.seq_length=32", "train.global_batch_size=4",
            "train.micro_batch_size=2", "train.train_iters=2", f"data.train_path={corpus_prefix}", f"output_dir={out}")
    return out / "checkpoint"


@pytest.mark.slow
def test_trainer_checkpoint_damaged_or_half_written_is_refused_by_every_reader(trained, converted, corpus_prefix,
                                                                              tmp_path, capsys):
    from pai_patch.convert.io import load_model_checkpoint
    from pai_patch.convert.marker import CheckpointError
    from pai_patch.models import get_family
    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    hf = converted["hf"]
    victim = flipped_copy(trained, tmp_path / "flipped", "*.distcp")
    capsys.readouterr()
    assert mcore2hf(tmp_path / "flipped", hf, tmp_path / "back") == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {victim}: CRC-32 ") and "; iteration 2 of " in line, line

    half = tmp_path / "half"  # what a save cut short before its marker would be, were it renamed
    shutil.copytree(trained, half)
    (half / "iter_0000002" / MARKER).unlink()
    expected = (f"error: {half / 'iter_0000002'}: no {MARKER}; the checkpoint was not completely written; "
                f"iteration 2 of {half} not read (--no-verify reads it anyway)")
    assert mcore2hf(half, hf, tmp_path / "back") == 2
    assert error_line(capsys.readouterr().err) == expected
    rc = main(["generate", "--mcore", str(half), "--family", "qwen2_5", "--input", str(PROMPTS),
               "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "2"])
    assert rc == 2 and error_line(capsys.readouterr().err) == expected
    family = get_family("qwen2_5")
    with model_parallel(), pytest.raises(CheckpointError, match="no COMPLETE.json"):
        load_model_checkpoint([family.build(family.size("tiny"), Runtime())], str(half))
    from tests.conftest import run_cli

    finetune = run_cli("train", "model.family=qwen2_5", "model.size=tiny", "train.seq_length=32", "train.train_iters=1",
                       "train.global_batch_size=4", "train.micro_batch_size=2", f"data.train_path={corpus_prefix}",
                       f"output_dir={tmp_path / 'ft'}", f"checkpoint.load={half}", check=False)
    assert finetune.returncode == 2, finetune.stderr[-3000:]
    assert finetune.stderr.strip().splitlines()[-1] == expected.replace("--no-verify", "checkpoint.verify=false")

    assert mcore2hf(half, hf, tmp_path / "back", "--no-verify") == 0
    assert f"{WARNING}{half / 'iter_0000002'} without" in capsys.readouterr().err
    assert (tmp_path / "back" / "config.json").is_file()
