"""`make recipe=qwen2_5 pipeline`: every stage on the tiny model, then a rerun that skips them all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _make(out: Path, target: str) -> str:
    result = subprocess.run(["make", "-s", "recipe=qwen2_5", f"output={out}", target], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_qwen_pipeline_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "qwen"
    _make(out, "pipeline")
    for stage in ("pretrain", "sft"):
        assert (out / stage / "checkpoint" / "latest_checkpointed_iteration.txt").is_file()
        assert (out / stage / "loss.png").is_file() and (out / stage / "lock.json").is_file()
    assert (out / "hf_export" / "model.safetensors.index.json").is_file()
    generated = [json.loads(x) for x in (out / "generate" / "output.jsonl").read_text().splitlines()]
    assert len(generated) == 6 and all("output" in g for g in generated)
    report = (out / "eval" / "report.md").read_text()
    assert "pai_tiny_mc/acc" in report and (out / "eval" / "report.png").is_file()

    # The fine-tuned model beats the model it started from on the shipped multiple-choice task.
    from pai_patch.evaluation.runner import evaluate

    tuned_acc = json.loads((out / "eval" / "results.json").read_text())["scores"]["pai_tiny_mc/acc"]
    base_acc = evaluate(out / "hf_base", ["pai_tiny_mc"], batch_size=16, apply_chat_template=True)["pai_tiny_mc/acc"]
    assert tuned_acc > base_acc + 0.05, (tuned_acc, base_acc)

    rerun = _make(out, "pipeline")
    for stage in ("data", "convert", "pretrain", "sft", "export", "eval", "generate"):
        assert f"[{stage}] up to date" in rerun, rerun[-3000:]

    # The same finished run, copied to another place with a copy of the repository (new paths, new mtimes).
    repo, moved = tmp_path / "elsewhere" / "repo", tmp_path / "elsewhere" / "qwen"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".venv", ".git", "output", "*.egg-info", "__pycache__"))
    shutil.copytree(out, moved, copy_function=shutil.copyfile)
    result = subprocess.run([sys.executable, "-m", "pai_patch", "stage", "pipeline", "recipe=qwen2_5",
                             f"output={moved}"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "elsewhere/repo/pai_patch" in subprocess.run(
        [sys.executable, "-c", "import pai_patch; print(pai_patch.__file__)"], cwd=repo, capture_output=True,
        text=True).stdout
    for stage in ("data", "convert", "pretrain", "sft", "export", "eval", "generate"):
        assert f"[{stage}] up to date" in result.stdout, result.stdout[-3000:]
