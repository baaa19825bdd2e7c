"""Recipe locks: a run's lock.json against the recipe's lock section, and `lock check` / `lock update`."""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from pai_patch.recipes.resolve import available, load_recipe, recipe_file
from pai_patch.reproduce import lock as L
from pai_patch.reproduce import lock_cli
from pai_patch.training.config import TrainConfig


def _dataset(tmp_path: Path) -> Path:
    prefix = tmp_path / "data" / "corpus_text_document"
    prefix.parent.mkdir()
    Path(f"{prefix}.bin").write_bytes(bytes(range(256)) * 16)
    Path(f"{prefix}.idx").write_bytes(b"MMIDIDX\x00\x00" + b"\x01" * 40)
    return prefix


def _train_cfg(prefix: Path, out: Path) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.train_path, cfg.output_dir = str(prefix), str(out)
    return cfg


def _recipe_lock_for(run: dict) -> dict:
    """A recipe lock that the run matches exactly (what `lock update` would have written)."""
    return {"image": "pai-patch:26.11", "venv": dict(run["packages"]), "image_pins": dict(run["packages"]),
            "tokenizer": run["tokenizer"], "files": {r: {"path": e["path"], "sha256": e["sha256"]}
                                                     for r, e in run["files"].items()}}


def test_training_lock_hashes_dataset_and_tokenizer(tmp_path):
    cfg = _train_cfg(_dataset(tmp_path), tmp_path / "run")
    run = L.read_run_lock(L.write_training_lock(cfg).parent)
    assert {"dataset.pretrain/.bin", "dataset.pretrain/.idx", "tokenizer/tokenizer.json"} <= set(run["files"])
    assert run["files"]["dataset.pretrain/.bin"]["sha256"] == L.sha256_file(Path(f"{cfg.data.train_path}.bin"))
    assert run["model"] == {"family": "qwen2_5", "size": "tiny"}
    assert run["packages"] == L.installed_versions()


def test_dataset_named_by_its_bin_file_is_the_same_dataset(tmp_path):
    prefix = _dataset(tmp_path)
    by_prefix = L.training_run_files(_train_cfg(prefix, tmp_path / "a"))
    assert L.training_run_files(_train_cfg(Path(f"{prefix}.bin"), tmp_path / "b")) == by_prefix


def test_changed_dataset_byte_is_a_difference(tmp_path):
    prefix = _dataset(tmp_path)
    cfg = _train_cfg(prefix, tmp_path / "run")
    recipe_lock = _recipe_lock_for(L.read_run_lock(L.write_training_lock(cfg).parent))
    assert L.diff_run(recipe_lock, L.read_run_lock(tmp_path / "run"))[0] == []

    data = bytearray(Path(f"{prefix}.bin").read_bytes())
    data[1000] ^= 0x01
    Path(f"{prefix}.bin").write_bytes(bytes(data))
    os.utime(f"{prefix}.bin", ns=(1, 1))  # a new mtime: the cached hash must not be reused
    diffs, _ = L.diff_run(recipe_lock, L.read_run_lock(L.write_training_lock(cfg).parent))
    assert len(diffs) == 1 and "dataset.pretrain/.bin" in diffs[0]


def test_changed_package_version_is_a_difference(tmp_path):
    run = L.read_run_lock(L.write_training_lock(_train_cfg(_dataset(tmp_path), tmp_path / "run")).parent)
    recipe_lock = _recipe_lock_for(run)
    changed = copy.deepcopy(run)
    changed["packages"]["transformers"] = "4.0.0"
    diffs, _ = L.diff_run(recipe_lock, changed)
    assert diffs == [f"package transformers: recipe pins {run['packages']['transformers']} "
                     f"({run['environment']}), run had 4.0.0"]
    # and against this environment: the run had 4.0.0, this venv has the pinned one
    diffs, _ = L.diff_run(recipe_lock, changed, current=run["packages"])
    assert any(d.startswith("environment now: transformers") for d in diffs)


def test_version_prefix_pins():
    assert L.version_matches("2.10", "2.10.0+cu128") and L.version_matches("2.10", "2.10")
    assert not L.version_matches("2.10", "2.1") and not L.version_matches("2.1", "2.10.0")
    assert L.version_matches("from nvcr.io/nvidia/pytorch:25.03-py3", "2.7.0a0")


def test_tokenizer_change_skips_tokenized_hashes_but_says_so(tmp_path):
    run = L.read_run_lock(L.write_training_lock(_train_cfg(_dataset(tmp_path), tmp_path / "run")).parent)
    recipe_lock = _recipe_lock_for(run)
    recipe_lock["tokenizer"] = "Qwen2Tokenizer"
    recipe_lock["files"]["dataset.pretrain/.bin"]["sha256"] = "0" * 64
    diffs, notes = L.diff_run(recipe_lock, run)
    assert diffs == [] and any("not compared" in n for n in notes)


def test_hash_cache_reuses_only_unchanged_files(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    first = L.hash_files({"x": f})
    assert L.hash_files({"x": f}, {"x": {**first["x"], "sha256": "cached"}})["x"]["sha256"] == "cached"
    f.write_bytes(b"abd")
    assert L.hash_files({"x": f}, {"x": {**first["x"], "sha256": "cached"}})["x"]["sha256"] == L.sha256_file(f)


def test_stage_fields_survive_the_trainer_merge(tmp_path):
    L.write_run_lock(tmp_path, {"recipe": "qwen2_5", "image": "pai-patch:26.11", "files": {"data.a": {"sha256": "1"}}})
    L.write_run_lock(tmp_path, {"recipe": None, "image": None, "packages": {"torch": "x"},
                                "files": {"dataset.b": {"sha256": "2"}}})
    run = L.read_run_lock(tmp_path)
    assert run["recipe"] == "qwen2_5" and run["image"] == "pai-patch:26.11" and run["packages"] == {"torch": "x"}
    assert set(run["files"]) == {"data.a", "dataset.b"}


# ---- the committed recipe locks --------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_recipe_lock_pins_match_dockerfile_requirements_and_shipped_files(name):
    lock = load_recipe(name).lock
    assert lock["image"] == load_recipe(name).image
    assert lock["image_pins"] == L.dockerfile_pins()
    assert lock["venv"] == L.venv_pins()
    assert lock["venv"]["transformer-engine"] == L.ABSENT and lock["venv"]["flash-attn"] == L.ABSENT
    shipped = L.hash_files(L.recipe_files(load_recipe(name)))
    assert shipped and {r: e["sha256"] for r, e in shipped.items()} == \
        {r: e["sha256"] for r, e in lock["files"].items() if r in shipped}


def test_render_and_replace_lock_block_round_trip():
    lock = load_recipe("qwen2_5").lock
    block = L.render_lock_yaml("qwen2_5", lock)
    assert yaml.safe_load(block)["lock"] == lock
    text = recipe_file("qwen2_5").read_text()
    assert L.replace_lock_block(text, "qwen2_5", block) == text  # the committed file is what update writes
    assert L.replace_lock_block("a: 1\n", "x", block) == "a: 1\n\n" + block
    with pytest.raises(ValueError, match="last block"):
        L.replace_lock_block("lock:\n  a: 1\nsizes: {}\n", "x", block)


# ---- the CLI ------------------------------------------------------------------------------------
def _check(run_dir: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    lock_cli.add_arguments(parser)
    return lock_cli.run(parser.parse_args(["check", str(run_dir), *extra]))


def _recipe_run(tmp_path: Path) -> Path:
    """A run dir whose lock is the qwen2_5 recipe's, as a stage run on the shipped files writes it."""
    recipe = load_recipe("qwen2_5")
    run = L.run_lock(tokenizer="shipped", files=L.recipe_files(recipe), recipe="qwen2_5",
                     model={"family": "qwen2_5", "size": "tiny"})
    run["environment"], run["packages"] = "venv", dict(recipe.lock["venv"])
    (tmp_path / "lock.json").write_text(json.dumps(run))
    return tmp_path


def test_cli_check_passes_then_names_each_difference(tmp_path, capsys):
    run_dir = _recipe_run(tmp_path)
    assert _check(run_dir, "--no-env") == 0
    assert "matches the lock of recipe qwen2_5" in capsys.readouterr().out

    run = json.loads((run_dir / "lock.json").read_text())
    run["packages"]["megatron-core"] = "0.15.0"
    run["files"]["data.pretrain_input"]["sha256"] = "f" * 64
    (run_dir / "lock.json").write_text(json.dumps(run))
    assert _check(run_dir, "--no-env") == 1
    out = capsys.readouterr().out
    assert "DIFF package megatron-core: recipe pins 0.16.1 (venv), run had 0.15.0" in out
    assert "DIFF file data.pretrain_input" in out and "2 difference(s) from the lock of recipe qwen2_5" in out


def test_cli_check_needs_a_recipe_for_direct_runs(tmp_path):
    L.write_run_lock(tmp_path, {"recipe": None, "files": {}})
    from pai_patch.cli import CliError

    with pytest.raises(CliError, match="--recipe"):
        _check(tmp_path)
    with pytest.raises(FileNotFoundError, match="lock.json"):
        _check(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.parametrize("name", available())
def test_committed_lock_is_what_update_generates(name):
    """Includes the tokenized datasets: `lock update` reruns the data stage in a scratch dir."""
    assert L.build_recipe_lock(name) == load_recipe(name).lock
