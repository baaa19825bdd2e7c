"""Resuming the distributed optimizer at another layout.

``dp_reshardable`` (the default, no gather while saving) resumes at another DP size with the
same losses as the unbroken run, and refuses another TP with one line saying what to do;
``fully_reshardable`` resumes at another TP too.  Every run starts from the converted checkpoint of
``tests/conftest.py`` (``layout_start``) and stops at step 5 of 10 (``exit_interval``), saving there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import losses, max_loss_diff, train_from_start

pytestmark = [pytest.mark.slow, pytest.mark.dist]
DO = "parallel.distributed_optimizer=true"


def _stopped_at_5(ckpt: Path, corpus: str, out: Path, *extra: str) -> None:
    train_from_start(ckpt, corpus, out, DO, "train.exit_interval=5", *extra)
    assert (out / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == "5"


@pytest.fixture(scope="module")
def stopped(layout_start: Path, corpus_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stopped-dp")
    _stopped_at_5(layout_start, corpus_prefix, out)
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_dp_reshardable_resumes_at_another_dp_size(stopped: Path, layout_start: Path, corpus_prefix: str,
                                                   layout_reference: dict[int, float], tmp_path: Path) -> None:
    run = _copy(stopped, tmp_path)
    train_from_start(layout_start, corpus_prefix, run, DO, nproc=2)  # DP=1 -> DP=2
    assert max_loss_diff(layout_reference, losses(run)) < 1e-5  # steps 1-5 before the stop, 6-10 after it


def test_dp_reshardable_refuses_another_tp_with_one_line(stopped: Path, layout_start: Path, corpus_prefix: str,
                                                         tmp_path: Path) -> None:
    run = _copy(stopped, tmp_path)
    result = train_from_start(layout_start, corpus_prefix, run, DO, "parallel.tp=2", nproc=2, check=False)
    assert result.returncode != 0
    assert "saved as dp_reshardable at TP=1 PP=1 EP=1" in result.stderr
    assert "checkpoint.optimizer_format=fully_reshardable" in result.stderr


def test_fully_reshardable_resumes_at_another_tp(layout_start: Path, corpus_prefix: str,
                                                 layout_reference: dict[int, float], tmp_path: Path) -> None:
    fmt = "checkpoint.optimizer_format=fully_reshardable"
    _stopped_at_5(layout_start, corpus_prefix, tmp_path, fmt)
    train_from_start(layout_start, corpus_prefix, tmp_path, DO, fmt, "parallel.tp=2", nproc=2)
    assert max_loss_diff(layout_reference, losses(tmp_path)) < 1e-5
