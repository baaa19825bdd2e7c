"""HF + DeepSpeed training really runs on DeepSpeed's CPU accelerator: ZeRO 1/2/3, one and two processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "pai_patch" / "assets" / "corpus"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import transformers

    from pai_patch.models import get_family

    root = tmp_path_factory.mktemp("hftrain")
    fam = get_family("llama2")
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(fam.hf_config(fam.size("tiny"))).save_pretrained(root / "llama")
    for f in (REPO / "pai_patch" / "assets" / "tokenizer").iterdir():
        shutil.copy(f, root / "llama")
    sft = json.loads((CORPUS / "sft_train.json").read_text(encoding="utf-8"))
    (root / "train.json").write_text(json.dumps(sft[:32]), encoding="utf-8")
    (root / "valid.json").write_text(json.dumps(sft[32:40]), encoding="utf-8")
    return {"root": root, "model": root / "llama", "train": root / "train.json", "valid": root / "valid.json"}


def hf_train(setup: dict[str, Path], out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "pai_patch", "hf_train", "--model", str(setup["model"]), "--train-data",
           str(setup["train"]), "--valid-data", str(setup["valid"]), "--output", str(out), "--micro-batch", "4",
           "--lr", "2e-3", "--seq-len", "48", "--precision", "fp32", "--epochs", "2", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_learned(result: dict, out: Path, setup: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == result["steps"] and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # falling, not noise
    assert result["valid_loss"][-1] < result["valid_loss"][0]
    trained = AutoModelForCausalLM.from_pretrained(str(out / "hf"))
    start = AutoModelForCausalLM.from_pretrained(str(setup["model"]))
    assert not torch.equal(trained.model.embed_tokens.weight, start.model.embed_tokens.weight)
    assert (out / "hf" / "tokenizer.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["1", "2", "3"])
def test_zero_stage_trains_on_cpu(setup: dict[str, Path], zero: str) -> None:
    out = setup["root"] / f"run_zero{zero}"
    extra = ["--gradient-checkpointing"] if zero == "3" else []
    result = hf_train(setup, out, "--zero", zero, *extra)
    assert json.loads((out / "ds_config.json").read_text())["zero_optimization"]["stage"] == int(zero)
    assert result["steps"] == 16  # 32 records / micro batch 4, two epochs
    assert_learned(result, out, setup)


@pytest.mark.slow
@pytest.mark.dist
def test_two_processes_zero2(setup: dict[str, Path]) -> None:
    out = setup["root"] / "run_dp2"
    result = hf_train(setup, out, "--zero", "2", "--nproc", "2")
    assert result["steps"] == 8  # each rank sees half the records
    assert_learned(result, out, setup)


def test_missing_model_is_a_clear_error(setup: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pai_patch", "hf_train", "--model", str(tmp_path / "none"),
                           "--train-data", str(setup["train"]), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and f"{tmp_path / 'none'}: no config.json" in proc.stderr
    assert not (tmp_path / "out").exists()
