"""Tiny pretraining on megatron-core on CPU: the loss falls, and a resumed run is bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import losses, run_cli


def _train(corpus: str, out: Path, *extra: str, nproc: int = 1) -> None:
    run_cli("train", "model.family=qwen2_5", "model.size=tiny", f"data.train_path={corpus}", f"output_dir={out}",
            "train.seq_length=64", *extra, nproc=nproc)


def test_tiny_pretrain_loss_falls_and_leaves_artifacts(corpus_prefix: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(corpus_prefix, out, "train.train_iters=30", "train.eval_interval=15", "checkpoint.save_interval=15")
    loss = losses(out)
    assert len(loss) == 30
    first, last = sum(loss[i] for i in range(1, 4)) / 3, sum(loss[i] for i in range(26, 31)) / 5
    assert first > 7.0 and last < first - 2.0, (first, last)
    assert (out / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == "30"
    assert (out / "checkpoint" / "iter_0000015" / "COMPLETE.json").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "loss.png").stat().st_size > 1000


def test_resume_is_bitwise_identical(corpus_prefix: str, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(corpus_prefix, straight, "train.train_iters=10")
    _train(corpus_prefix, resumed, "train.train_iters=10", "train.exit_interval=4")
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    _train(corpus_prefix, resumed, "train.train_iters=10", "train.exit_interval=4")
    _train(corpus_prefix, resumed, "train.train_iters=10", "train.exit_interval=4")
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == list(range(1, 11))
    assert all(a[i] == b[i] for i in a), [(i, a[i], b[i]) for i in a if a[i] != b[i]]


@pytest.mark.parametrize("recompute", ["false", "full"])  # full replays the router in backward: not counted twice
def test_deepseek_logs_moe_aux_loss_and_expert_tokens(recompute: str, corpus_prefix: str, tmp_path: Path) -> None:
    import json

    run_cli("train", "model.family=deepseek_v2", "model.size=tiny", f"data.train_path={corpus_prefix}",
            f"output_dir={tmp_path}", "train.seq_length=64", "train.train_iters=3", f"train.recompute={recompute}",
            "train.recompute_layers=4")
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["moe/seq_load_balancing_loss"] > 0
    per_layer = last["moe/expert_tokens"]
    assert len(per_layer) == 3 and all(len(layer) == 8 for layer in per_layer)  # 3 MoE layers (1 dense), 8 experts
    assert all(sum(layer) == 8 * 64 * 2 for layer in per_layer)  # every token of the global batch, top-2
