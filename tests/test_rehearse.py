"""`make recipe=R size=S rehearse`: a GPU job's start-up checks, at published sizes, on published-shape
checkpoints that cost no disk (tests/sparse_checkpoint.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pai_patch.cli import main
from pai_patch.models import get_family
from pai_patch.models.base import Runtime
from pai_patch.models.params import count_params
from pai_patch.training.memory_estimate import Job, estimate
from tests.sparse_checkpoint import write_sparse_hf


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sparse_hf("qwen2_5", "7B", tmp_path_factory.mktemp("hf") / "Qwen2.5-7B")


def rehearse(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    try:
        rc = main(["stage", "rehearse", f"output={tmp_path / 'out'}", *args])
    except SystemExit as stop:
        rc = int(stop.code)
    return rc, capsys.readouterr().out


def test_published_size_rehearses_green(qwen7b, tmp_path, capsys) -> None:
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=7B", f"hf={qwen7b}")
    assert rc == 0, out
    assert f"convert.hf: {qwen7b}: 339 tensors, names and shapes match qwen2_5 7B" in out
    assert f"pretrain tokenizer: Qwen2Tokenizer from {qwen7b}" in out  # found in hf=, no tokenizer directory given
    assert "3052 iterations x global batch 8 x seq 4096 = 100,007,936 tokens" in out  # train_tokens 1e8
    assert "pretrain layout: TP=2 PP=1 CP=1 EP=1 DP=4, SP=True; 2 micro-batch(es) of 1 per step" in out
    assert "of H800's 80: fits" in out
    assert "world: 8 GPUs = 1 x 8" in out
    assert (tmp_path / "out").exists() is False  # a rehearsal writes nothing


def test_a_layout_rule_is_named(qwen7b, tmp_path, capsys) -> None:
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=7B", f"hf={qwen7b}", "tp=3")
    assert rc == 1
    assert "error: pretrain layout: invalid parallel layout: world size 8 must equal TP*PP*CP*DP" in out


def test_a_checkpoint_of_another_size_is_named_by_its_tensor(tmp_path, capsys) -> None:
    other = write_sparse_hf("qwen2_5", "3B", tmp_path / "Qwen2.5-3B")
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=7B", f"hf={other}")
    assert rc == 1
    assert "error: convert.hf: " in out and "has shape [151936, 2048], but size 7B of qwen2_5 needs" in out


def test_without_a_checkpoint_every_missing_place_is_named(tmp_path, capsys) -> None:
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=7B")
    assert rc == 1
    assert "error: convert.hf: size 7B starts from its published HF checkpoint; pass hf=DIR" in out
    assert "error: pretrain tokenizer: tokenizer 'Qwen2Tokenizer': no tokenizer files" in out
    assert "the HF checkpoint (hf=): not given" in out


def test_memory_against_the_named_gpu_and_what_would_fit(tmp_path, capsys) -> None:
    hf = write_sparse_hf("qwen2_5", "72B", tmp_path / "Qwen2.5-72B")
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=72B", f"hf={hf}", "nodes=2")
    assert rc == 1
    assert "world: 16 GPUs = 2 x 8" in out
    assert "does not fit H800's 80 GB; it would with 32 GPUs and a global batch that divides by 2" in out
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=72B", f"hf={hf}", "nodes=2", "gpu=H200")
    assert rc == 0, out
    assert "of H200's 141: fits" in out


def test_dlc_world_comes_from_the_platform(qwen7b, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("KUBERNETES_CONTAINER_RESOURCE_GPU", "8")
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=7B", f"hf={qwen7b}", "env=dlc")
    assert rc == 1  # the recipe's global batch 8 is for one node
    assert "error: pretrain layout: invalid parallel layout: global batch 8 must divide by micro batch * DP = 1*16" in out
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", "size=7B", f"hf={qwen7b}", "env=dlc",
                       "pretrain.train.global_batch_size=32", "sft.train.global_batch_size=32")
    assert rc == 0, out
    assert "world: 32 GPUs = 4 x 8 (nodes: WORLD_SIZE; per node: KUBERNETES_CONTAINER_RESOURCE_GPU)" in out
    assert "DP=16" in out


def test_estimate_follows_the_switches() -> None:
    family = get_family("qwen2_5")
    size = family.size("7B")
    counts = count_params(family, size)
    base = Job(Runtime(tp=2, sequence_parallel=True, precision="bf16", seq_length=4096), world=8, micro_batch=1,
               global_batch=8, distributed_optimizer=False)
    plain = estimate(size, counts, base)
    sharded = estimate(size, counts, dataclasses.replace(base, distributed_optimizer=True))
    assert sharded.optimizer == pytest.approx(plain.optimizer / 4)  # DP=4 shards the optimizer states
    assert sharded.weights == plain.weights and sharded.grads == 2 * plain.weights  # fp32 main grads
    full = estimate(size, counts, dataclasses.replace(base, rt=dataclasses.replace(base.rt, recompute="full")))
    assert full.activations < plain.activations / 10
    fp32 = estimate(size, counts, dataclasses.replace(base, rt=dataclasses.replace(base.rt, precision="fp32")))
    assert fp32.weights == 2 * plain.weights


def _convert(hf: Path, out: Path, *args: str) -> Path:
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "pai_patch", "convert", "hf2mcore", "--model", "qwen2_5",
                             "--hf", str(hf), "--mcore", str(out), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_legacy_checkpoint_at_another_layout_is_named(tmp_path, capsys) -> None:
    """Seed 000's trap: a legacy checkpoint converted at one TP, fine-tuned at another, fails only on the cluster."""
    from pai_patch.recipes.hf_init import write_random_hf

    write_random_hf("qwen2_5", "tiny", tmp_path / "hf", "shipped")
    ckpt = _convert(tmp_path / "hf", tmp_path / "legacy", "--format", "legacy", "--tp", "1")
    rc, out = rehearse(capsys, tmp_path, "recipe=qwen2_5", f"sft.checkpoint.load={ckpt}", "tp=2", "gpus=2")
    assert rc == 1
    assert (f"error: sft checkpoint: {ckpt}: legacy checkpoint at TP=1 PP=1 EP=1, but the job runs at TP=2 PP=1 "
            "EP=1; convert at the job's layout or to torch_dist") in out


@pytest.mark.slow
def test_seed_line_at_its_published_size_rehearses_from_the_converted_checkpoint(corpus_prefix, tmp_path) -> None:
    """Seed 001's Qwen2.5-0.5B continued pretraining, typed as written with DRY_RUN=rehearse: the tokenizer is
    found in the converted checkpoint (the seed passes no tokenizer directory), names and shapes match."""
    import os
    import subprocess

    from tests.conftest import ROOT

    hf = write_sparse_hf("qwen2_5", "0.5B", tmp_path / "Qwen2.5-0.5B")
    ckpt = _convert(hf, tmp_path / "mcore", "--size", "0.5B", "--dtype", "bf16")
    args = ["dsw", "0.5B", "1", "8", "1e-5", "1e-6", "128", "128", "bf16", "1", "1", "1", "true", "true", "true",
            "false", "sel", "false", "100000", corpus_prefix, corpus_prefix, str(ckpt), "10000", "100",
            str(tmp_path / "out")]
    result = subprocess.run(["sh", "recipes/qwen2_5/run_mcore_qwen.sh", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "DRY_RUN": "rehearse"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"pretrain tokenizer: Qwen2Tokenizer from {ckpt}" in result.stdout
    assert f"pretrain checkpoint: {ckpt}: torch_dist, loads at any layout; names and shapes match" in result.stdout
    assert "pretrain memory:" in result.stdout and ": fits" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("recipe,size,world", [
    ("deepseek_v2", "A2.4B", []), ("deepseek_v2", "A21B", ["nodes=8", "gpu=H200"]), ("qwen2_5", "0.5B", []),
    ("qwen2_5", "72B", ["nodes=2", "gpu=H200"]), ("llama2", "7B", []),
])
def test_published_sizes_at_their_recipe_layouts(recipe, size, world, tmp_path, capsys) -> None:
    """The seeds' sizes (DeepSeek-V2-Lite at TP=2 EP=4, the 236B at PP=8 EP=8, Qwen2.5-0.5B/72B, Llama-2-7B) on
    sparse published-shape checkpoints. By the estimate the 236B and 72B need H200-class memory at these worlds."""
    hf = write_sparse_hf(get_family(recipe).name, size, tmp_path / f"{recipe}-{size}")
    rc, out = rehearse(capsys, tmp_path, f"recipe={recipe}", f"size={size}", f"hf={hf}", *world)
    assert rc == 0, out
    assert out.count(": fits") == 2 and "names and shapes match" in out
