"""Golden losses: each family's tiny run on the shipped corpus reproduces tests/golden/<family>.json.

Regenerate after a deliberate numerics change with `make golden`.
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from pai_patch.recipes.resolve import load_recipe
from pai_patch.reproduce import golden, lock_cli

FAMILIES = golden.available_families()


def _stored(family: str) -> dict:
    return json.loads(golden.golden_path(family).read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_file_is_complete_and_matches_the_recipe_data(family):
    """The stored losses were made from the very tokenized corpus the recipe lock pins."""
    stored = _stored(family)
    assert stored["iterations"] == golden.ITERATIONS == len(stored["losses"])
    assert all(0.0 < x < 20.0 for x in stored["losses"])
    pinned = load_recipe(family).lock["files"]
    assert stored["dataset_sha256"] == {ext: pinned[f"dataset.pretrain/.{ext}"]["sha256"] for ext in ("bin", "idx")}


def test_compare_is_exact_on_the_same_platform():
    stored = _stored(FAMILIES[0])
    assert golden.compare(stored, copy.deepcopy(stored)) == []
    nudged = copy.deepcopy(stored)
    nudged["losses"][7] = stored["losses"][7] * (1 + 1e-15) + 1e-15
    assert [p.split(":")[0] for p in golden.compare(stored, nudged)] == ["iteration 8"]


def test_compare_allows_the_stated_tolerance_across_platforms():
    stored = _stored(FAMILIES[0])
    other = copy.deepcopy(stored) | {"cpu_capability": "other"}
    other["losses"] = [x * (1 + golden.CROSS_PLATFORM_RTOL / 2) for x in stored["losses"]]
    assert golden.compare(stored, other) == []
    other["losses"][0] = stored["losses"][0] * (1 + 2 * golden.CROSS_PLATFORM_RTOL)
    assert len(golden.compare(stored, other)) == 1


def test_compare_flags_changed_data():
    stored = _stored(FAMILIES[0])
    changed = copy.deepcopy(stored)
    changed["dataset_sha256"]["bin"] = "0" * 64
    assert "tokenized shipped corpus differs" in golden.compare(stored, changed)[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_training_reproduces_golden_losses(family, workdir):
    assert golden.compare(_stored(family), golden.measure(family, workdir)) == []


@pytest.mark.slow
def test_direct_training_run_matches_the_recipe_lock(workdir):
    """The lock.json the trainer writes in a plain `train` run passes `lock check` against the recipe."""
    run_dir = workdir / "qwen2_5-run"
    if not (run_dir / "lock.json").exists():
        golden.measure("qwen2_5", workdir)
    parser = argparse.ArgumentParser()
    lock_cli.add_arguments(parser)
    assert lock_cli.run(parser.parse_args(["check", str(run_dir), "--recipe", "qwen2_5"])) == 0


@pytest.mark.slow
def test_one_changed_initial_weight_fails_the_golden_check(workdir):
    """+1e-3 on one initial weight: the comparison must fail, even at the cross-platform tolerance."""
    stored = _stored("qwen2_5")
    perturbed = golden.measure("qwen2_5", workdir, perturb=1e-3)
    assert golden.compare(stored, perturbed) != []
    relaxed = copy.deepcopy(perturbed) | {"cpu_capability": "other"}
    assert golden.compare(stored, relaxed) != []
