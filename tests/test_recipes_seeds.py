"""The seeds' positional launchers: same arguments, same resolved job as the `make` form."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pai_patch.configio import ConfigError
from pai_patch.recipes.resolve import load_recipe, train_config
from pai_patch.recipes.seed_args import translate
from tests.conftest import ROOT

CORPUS = ROOT / "pai_patch" / "assets" / "corpus"


def qwen_pretrain(size: str, data: str, out: str, ckpt: str = "none") -> list[str]:
    """Seed 001's continued-pretraining example, with a small size and local paths."""
    return ["dsw", size, "1", "8", "1e-5", "1e-6", "128", "128", "bf16", "1", "1", "1", "true", "true", "true",
            "false", "false", "false", "100000", data, data, ckpt, "10000", "100", out]


def deepseek_sft_raw(out: str) -> list[str]:
    """Seed 000's raw-JSON SFT example (MP_DATASET_TYPE=raw)."""
    data = str(CORPUS / "sft_train.json")
    return ["dsw", "tiny", "1", "8", "1e-5", "1e-6", "128", "128", "bf16", "1", "1", "1", "1", "true", "true", "true",
            "true", "false", "false", "100000", data, data, "none", "10000", "100", out]


def _dry_run_job(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True,
                            env={**os.environ, "DRY_RUN": "1", **(env or {})})
    text = result.stdout
    return json.loads(text[text.index("\n{") + 1:text.index("\n}") + 2])


def test_seed_script_and_make_resolve_the_same_job(tmp_path: Path) -> None:
    data, out = str(tmp_path / "wudao_text_document"), str(tmp_path / "out")
    seed = _dry_run_job(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *qwen_pretrain("tiny", data, out)])
    make = _dry_run_job(["make", "-s", "recipe=qwen2_5", "size=tiny", "output=" + out,
                         "pretrain.train.micro_batch_size=1", "pretrain.train.global_batch_size=8",
                         "pretrain.optim.lr=1e-5", "pretrain.optim.min_lr=1e-6", "pretrain.train.seq_length=128",
                         "pretrain.data.pad_length=128", "pretrain.train.precision=bf16", "tp=1", "pp=1", "cp=1",
                         "do=true", "pretrain.train.flash_attn=true", "pretrain.train.recompute=false",
                         "pretrain.optim.offload=false", "pretrain.checkpoint.save_interval=100000",
                         f"pretrain.data.train_path={data}", f"pretrain.data.valid_path={data}",
                         "pretrain.train.train_tokens=10000", "pretrain.train.train_iters=null",
                         "pretrain.train.warmup_tokens=100", "pretrain.train.warmup_iters=null", "pretrain"])
    assert seed == make
    assert seed["train"]["iterations"] if "iterations" in seed["train"] else True
    assert seed["train"]["train_tokens"] == 10000 and seed["parallel"]["sequence_parallel"] is False


def test_dry_run_prints_the_iterations_and_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    """DRY_RUN=1 printed no iteration count and accepted a PRETRAIN_CHECKPOINT_PATH that does not exist."""
    data, out = str(tmp_path / "wudao_text_document"), str(tmp_path / "out")
    env = {**os.environ, "DRY_RUN": "1"}
    run = subprocess.run(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *qwen_pretrain("tiny", data, out)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert "[pretrain] 10 iterations: 10000 tokens / (global batch 8 x seq 128 = 1024 tokens)" in run.stdout
    missing = tmp_path / "Qwen2.5-0.5B-to-mcore"
    run = subprocess.run(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *qwen_pretrain("tiny", data, out, str(missing))],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: pretrain.checkpoint.load: {missing}: no such checkpoint directory"]


def test_environment_switches() -> None:
    env = {"MP_DATASET_TYPE": "raw", "MP_AC_LAYERS": "2", "MP_SFT_PACKING": "true"}
    stage, overrides, _ = translate("run_mcore_deepseek", deepseek_sft_raw("/tmp/o"), env)
    assert stage == "sft"
    assert {"sft.data.type=raw", "sft.train.recompute_layers=2", "sft.data.pack=true",
            "sft.train.train_iters=10000", "parallel.ep=1", "from_scratch=true"} <= set(overrides)  # CKPT none


def test_wrong_count_and_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"run_mcore_qwen.sh takes 25 arguments, got 3; usage: .*ENV MODEL_SIZE"):
        translate("run_mcore_qwen", ["dsw", "0.5B", "1"], {})
    args = qwen_pretrain("tiny", "d", "o")
    args[8] = "fp64"
    with pytest.raises(ConfigError, match=r"argument 9 \(PR\) = 'fp64'; allowed: fp16, bf16, fp8"):
        translate("run_mcore_qwen", args, {})
    args = qwen_pretrain("tiny", "d", "o")
    args[16] = "selective"
    with pytest.raises(ConfigError, match=r"argument 17 \(AC\) = 'selective'; allowed: sel, full, offload, false"):
        translate("run_mcore_qwen", args, {})


def qwen3_pretrain(size: str, data: str, out: str, offload: str = "0.5") -> list[str]:
    """The original toolkit's run_mcore_qwen3.sh example (27 arguments: ETP after CP, then EP)."""
    return ["dsw", size, "1", "8", "1e-5", "1e-6", "128", "128", "bf16", "1", "1", "1", "1", "1", "true", "true",
            "true", "false", "sel", offload, "100000", data, data, "none", "10000", "100", out]


def test_qwen3_launcher_takes_etp_and_a_fractional_optimizer_offload(tmp_path: Path) -> None:
    stage, overrides, _ = translate("run_mcore_qwen3", qwen3_pretrain("tiny", "d", "o"), {})
    assert stage == "pretrain" and overrides[0] == "recipe=qwen3"
    assert {"parallel.etp=1", "parallel.ep=1", "pretrain.optim.offload=0.5", "pretrain.train.recompute=sel"} \
        <= set(overrides)
    assert "pretrain.optim.offload=false" in translate("run_mcore_qwen3", qwen3_pretrain("tiny", "d", "o", "false"),
                                                       {})[1]
    with pytest.raises(ConfigError, match=r"run_mcore_qwen3.sh takes 27 arguments, got 25; usage: .* CP ETP EP SP"):
        translate("run_mcore_qwen3", qwen_pretrain("tiny", "d", "o"), {})
    with pytest.raises(ConfigError, match=r"argument 20 \(OPTIMIZER_OFFLOAD\) = 'half'; expected false or a fraction"):
        translate("run_mcore_qwen3", qwen3_pretrain("tiny", "d", "o", "half"), {})
    with pytest.raises(ConfigError, match=r"optim.offload: a fraction of the optimizer state must be within 0 and 1"):
        train_config(load_recipe("qwen3", ["pretrain.optim.offload=1.5"]), "pretrain")
    job = _dry_run_job(["sh", "recipes/qwen3/run_mcore_qwen3.sh", *qwen3_pretrain("tiny", "d", str(tmp_path))])
    assert job["optim"]["offload"] == 0.5 and job["model"] == {"family": "qwen3", "size": "tiny"}


def test_bad_size_through_the_script_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *qwen_pretrain("9B", "d", str(tmp_path))],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "DRY_RUN": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown size '9B' for qwen2_5; valid sizes:")


@pytest.mark.slow
def test_seed_pretrain_example_runs(corpus_prefix: str, tmp_path: Path) -> None:
    """Seed 001's pretraining command, as written (tiny size, shipped corpus): 10 iterations in bf16."""
    out = tmp_path / "out"
    subprocess.run(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *qwen_pretrain("tiny", corpus_prefix, str(out))],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    rows = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 11))  # ceil(10000 tokens / (8 x 128))
    assert (out / "pretrain" / "checkpoint" / "iter_0000010" / "COMPLETE.json").is_file()


@pytest.mark.slow
def test_seed_raw_json_sft_example_runs(tmp_path: Path) -> None:
    """Seed 000's MP_DATASET_TYPE=raw SFT command on the tiny DeepSeek-V2, a few iterations."""
    out = tmp_path / "out"
    args = deepseek_sft_raw(str(out))
    args[23], args[24] = "3", "1"  # TRAIN/WARMUP_TOKENS_OR_ITERS: 3 iterations instead of 10000, 1 of warmup
    subprocess.run(["sh", "recipes/deepseek_v2/run_mcore_deepseek.sh", *args], cwd=ROOT, check=True,
                   capture_output=True, text=True, env={**os.environ, "MP_DATASET_TYPE": "raw"})
    rows = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)


@pytest.mark.slow
def test_seed_converter_output_loads_in_the_raw_sft_line(tmp_path: Path) -> None:
    """Seed 000 converts at TP=2 EP=4, then its raw-JSON SFT line loads that checkpoint at TP=1 EP=1.

    The converter wrapper wrote legacy rank files by default, which load only at the layout they were
    split for, so the SFT stopped on a layout mismatch; it now writes the recipe's format (torch_dist)."""
    from tests.test_convert_roundtrip import make_hf

    hf, mcore, out = make_hf("deepseek_v2", tmp_path / "hf"), tmp_path / "mcore-tp2-pp1-ep4", tmp_path / "out"
    subprocess.run(["sh", "toolkits/model_checkpoints_convertor/deepseek/hf2mcore_deepseek_v2_moe_convertor.sh",
                    "tiny", str(hf), str(mcore), "2", "1", "4", "fp32", "true", "false"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    args = deepseek_sft_raw(str(out))
    args[22], args[23], args[24] = str(mcore), "2", "1"  # PRETRAIN_CHECKPOINT_PATH; 2 iterations, 1 of warmup
    result = subprocess.run(["sh", "recipes/deepseek_v2/run_mcore_deepseek.sh", *args], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "MP_DATASET_TYPE": "raw"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"load: {mcore}" in (out / "sft" / "job.yaml").read_text()
    assert len((out / "sft" / "metrics.jsonl").read_text().splitlines()) == 2


def test_seed_data_script_runs_under_sh(tmp_path: Path) -> None:
    """Seed 000 runs the preprocessing wrapper with `sh` (dash here), not bash."""
    subprocess.run(["sh", str(ROOT / "toolkits/pretrain_data_preprocessing/run_make_pretraining_dataset_megatron.sh"),
                    str(CORPUS / "pretrain.jsonl"), "DeepSeekV2Tokenizer", "text", str(tmp_path),
                    str(ROOT / "pai_patch" / "assets" / "tokenizer")], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "mmap_deepseekv2_datasets_text_document.idx").is_file()
