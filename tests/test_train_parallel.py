"""Layouts change how the work is split, not what is computed.

Every run starts from the same converted checkpoint (``layout_start`` in ``tests/conftest.py``:
a seeded HF model through ``convert hf2mcore``, torch_dist, which loads at any layout) and
trains 10 steps on the same data; TP=2, PP=2 (also interleaved with VP=2, and uneven with one
layer on the first stage), DP=2 under torchrun and the distributed optimizer must match the
single-process run (``layout_reference``, made once per session), and activation checkpointing
(sel/full/offload) must not change the loss.  A virtual-pipeline run also starts from a legacy
checkpoint (Megatron-LM's ``model0``/``model1`` rank files) and resumes from its own checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import losses, max_loss_diff, run_cli, train_from_start

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def legacy_vp_start(layout_start: Path) -> Path:
    """The same weights as ``layout_start``, as legacy rank files for PP=2 with two chunks per stage."""
    hf = layout_start.parent / "hf"
    run_cli("convert", "hf2mcore", "--model", "qwen2_5", "--size", "tiny", "--hf", str(hf),
            "--mcore", str(layout_start.parent / "legacy_vp"), "--format", "legacy", "--pp", "2", "--vp", "2")
    return layout_start.parent / "legacy_vp"


@pytest.mark.dist
@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"], [], ["parallel.distributed_optimizer=true"],
                                    ["parallel.tp=2", "parallel.sequence_parallel=true"],
                                    ["parallel.pp=2", "parallel.vp=2"], ["parallel.pp=2", "parallel.pp0_layers=1"]],
                         ids=["tp2", "pp2", "dp2", "dp2-distopt", "tp2-sp", "pp2-vp2", "pp2-first-stage-1-layer"])
def test_two_process_layouts_match_single_process(layout: list[str], layout_start: Path, corpus_prefix: str,
                                                  layout_reference: dict[int, float], tmp_path: Path) -> None:
    result = train_from_start(layout_start, corpus_prefix, tmp_path, *layout, nproc=2)
    assert max_loss_diff(layout_reference, losses(tmp_path)) < 1e-5
    assert "Warning" not in result.stderr, result.stderr[-2000:]  # TP runs warned about CUDA_DEVICE_MAX_CONNECTIONS


@pytest.mark.dist
def test_virtual_pipeline_from_legacy_chunks_resumes_exactly(legacy_vp_start: Path, corpus_prefix: str,
                                                             layout_reference: dict[int, float],
                                                             tmp_path: Path) -> None:
    vp = ("parallel.pp=2", "parallel.vp=2")
    for _ in range(2):  # stops after step 5 with a checkpoint; the second run resumes from it
        train_from_start(legacy_vp_start, corpus_prefix, tmp_path, *vp, "train.exit_interval=5", nproc=2)
    assert (tmp_path / "checkpoint" / "iter_0000005").is_dir()
    assert max_loss_diff(layout_reference, losses(tmp_path)) < 1e-5
    # a legacy checkpoint holds one rank's chunks, so a run without VP is told to convert again
    wrong = run_cli("train", "model.family=qwen2_5", "model.size=tiny", f"data.train_path={corpus_prefix}",
                    f"output_dir={tmp_path / 'wrong'}", f"checkpoint.load={legacy_vp_start}", "train.seq_length=64",
                    "train.train_iters=1", "parallel.pp=2", nproc=2, check=False)
    assert wrong.returncode != 0
    assert "legacy checkpoint written for TP=1 PP=2 EP=1 VP=2, but this run uses TP=1 PP=2 EP=1" in wrong.stderr


@pytest.mark.parametrize("mode", ["sel", "full", "offload"])
def test_activation_checkpointing_keeps_the_loss(mode: str, layout_start: Path, corpus_prefix: str,
                                                 layout_reference: dict[int, float], tmp_path: Path) -> None:
    train_from_start(layout_start, corpus_prefix, tmp_path, f"train.recompute={mode}", "train.recompute_layers=1")
    assert max_loss_diff(layout_reference, losses(tmp_path)) < 1e-6
