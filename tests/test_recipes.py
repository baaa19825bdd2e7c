"""Recipes: every size row resolves into a valid layout; overrides, errors, launch commands."""

from __future__ import annotations

import pytest

from pai_patch.configio import ConfigError
from pai_patch.models import families, get_family
from pai_patch.models.base import Runtime
from pai_patch.parallel import LayoutError, validate_layout
from pai_patch.recipes.launch import nodes_and_procs, train_command
from pai_patch.recipes.resolve import available, load_recipe, paths, train_config

ROWS = [(r, s) for r in available() for s in get_family(load_recipe(r).model.family).sizes]


def test_every_family_has_a_recipe() -> None:
    assert available() == sorted(families())
    assert all(load_recipe(name).model.family == name for name in available())


@pytest.mark.parametrize("name,size", ROWS)
def test_every_size_resolves_to_a_valid_layout(name: str, size: str) -> None:
    recipe = load_recipe(name, [f"size={size}", "launch.nproc_per_node=1"])
    family = get_family(recipe.model.family)
    row = family.size(size)
    p = recipe.parallel
    dp = max(p.ep // __import__("math").gcd(p.ep, p.cp), 1)
    world = p.tp * p.pp * p.cp * dp
    for stage in ("pretrain", "sft"):
        cfg = train_config(recipe, stage)
        validate_layout(row, cfg.runtime(), world, global_batch=cfg.train.global_batch_size,
                        micro_batch=cfg.train.micro_batch_size, num_experts=family.num_routed_experts(row),
                        seq_length=cfg.seq_length)
        assert cfg.train.iterations >= 1
    if size != "tiny":
        assert recipe.pretrain.train["precision"] == "bf16"  # real sizes train in bf16 on GPUs
        assert recipe.eval.num_fewshot == 5  # the protocol of the published CMMLU / C-Eval figures


def test_overrides_and_aliases() -> None:
    recipe = load_recipe("qwen2_5", ["size=7B", "tp=4", "pretrain.optim.lr=2e-5", "output=/tmp/x"])
    assert recipe.model.size == "7B" and recipe.parallel.tp == 4
    assert recipe.pretrain.optim["lr"] == 2e-5 and str(paths(recipe).root) == "/tmp/x"
    assert recipe.parallel.sequence_parallel  # from the 7B size row


def test_errors_name_what_is_valid() -> None:
    with pytest.raises(ConfigError, match=f"unknown recipe 'qwen9'; valid recipes: {', '.join(available())}$"):
        load_recipe("qwen9")
    with pytest.raises(KeyError, match="valid sizes: tiny, 7B, 13B, 70B"):
        load_recipe("llama2", ["size=8B"])
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown key paralel"):
        load_recipe("llama2", ["paralel.tp=2"])


def test_layout_rules_are_named() -> None:
    ds = get_family("deepseek_v2")
    row = ds.size("A2.4B")
    with pytest.raises(LayoutError, match="EP=3 must divide the routed experts"):
        validate_layout(row, Runtime(ep=3), 3, num_experts=ds.num_routed_experts(row))
    qwen = get_family("qwen2_5").size("7B")
    with pytest.raises(LayoutError, match="TP=3 must divide the attention heads"):
        validate_layout(qwen, Runtime(tp=3), 3)
    with pytest.raises(LayoutError, match="world size 6 must equal TP\\*PP\\*CP\\*DP"):
        validate_layout(qwen, Runtime(tp=4), 6)
    with pytest.raises(LayoutError, match="sequence parallel \\(SP=true\\) requires TP > 1"):
        validate_layout(qwen, Runtime(sequence_parallel=True), 1)
    with pytest.raises(LayoutError, match="CP=2 requires the sequence length"):
        validate_layout(qwen, Runtime(cp=2), 2, seq_length=4094)
    with pytest.raises(LayoutError, match="mixture-of-experts model at TP=2 needs sequence parallel"):
        validate_layout(row, Runtime(tp=2), 2, num_experts=ds.num_routed_experts(row))
    with pytest.raises(LayoutError, match="global batch 6 must divide"):
        validate_layout(qwen, Runtime(), 4, global_batch=6, micro_batch=1)


def test_dsw_on_cpu_uses_the_fewest_processes_the_layout_needs() -> None:
    recipe = load_recipe("deepseek_v2", ["tp=2", "ep=4"])
    assert nodes_and_procs(recipe, {}) == (1, 8)  # TP=2 x DP=4 (EP=4 must divide DP)
    cmd = train_command(recipe, "job.yaml", {})
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node", "8", "--master_port"]


def test_dlc_launch_reads_the_platform_environment() -> None:
    recipe = load_recipe("qwen2_5", ["env=dlc"])
    env = {"WORLD_SIZE": "4", "RANK": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "23456",
           "KUBERNETES_CONTAINER_RESOURCE_GPU": "8"}
    cmd = train_command(recipe, "job.yaml", env)
    joined = " ".join(cmd)
    assert "--nproc_per_node 8 --nnodes 4 --node_rank 2 --master_addr 10.0.0.1 --master_port 23456" in joined
    with pytest.raises(ConfigError, match="WORLD_SIZE, RANK, MASTER_ADDR not set"):
        train_command(recipe, "job.yaml", {})


def test_stage_stamps_survive_a_moved_checkout(tmp_path, monkeypatch) -> None:
    """A copy at another path (PAI mounts one repository at /mnt and /workspace) keeps every finished stage."""
    import shutil

    from pai_patch.recipes import stages
    from pai_patch.recipes.resolve import Paths

    def finished(root):
        (root / "data").mkdir(parents=True)
        (root / "data" / "pretrain_text_document.bin").write_bytes(bytes(range(256)) * 4)
        (root / "data" / "sft_train.idx").write_text("index")
        return Paths(root)

    a = finished(tmp_path / "mnt" / "out")
    settings = {"train_path": str(a.data / "pretrain_text_document"), "tokenizer": str(stages.ROOT / "assets")}
    stamp = stages._fingerprint(a, [a.data], settings)

    moved = Paths(tmp_path / "workspace" / "out")
    shutil.copytree(a.root, moved.root, copy_function=shutil.copyfile)  # new mtimes, as another mount shows them
    monkeypatch.setattr(stages, "ROOT", tmp_path / "workspace" / "repo")
    moved_settings = {"train_path": str(moved.data / "pretrain_text_document"),
                      "tokenizer": str(stages.ROOT / "assets")}
    assert stages._fingerprint(moved, [moved.data], moved_settings) == stamp

    (moved.data / "sft_train.idx").write_text("other")  # same size, other content: the stage is stale
    assert stages._fingerprint(moved, [moved.data], moved_settings) != stamp


@pytest.mark.parametrize("name", available())
def test_a_learning_rate_megatron_would_assert_on_stops_the_pipeline_before_any_stage(name, tmp_path, capsys,
                                                                                      monkeypatch) -> None:
    from pai_patch.recipes.stages import run_stage

    monkeypatch.setenv("DRY_RUN", "1")
    with pytest.raises(ConfigError, match=r"optim\.lr \(1e-06\) is below optim\.min_lr \(0\.0002\)"):
        run_stage("pipeline", [f"recipe={name}", f"output={tmp_path}", "sft.optim.lr=1e-6"])
    assert capsys.readouterr().out == ""  # not even the data stage started


@pytest.mark.parametrize("stage,override", [("export", "export.verify=false"), ("generate", "generate.verify=false"),
                                            ("serve", "generate.verify=false")])
def test_readers_stages_pass_no_verify_only_when_the_recipe_turns_the_check_off(stage, override, tmp_path, capsys,
                                                                                 monkeypatch) -> None:
    """export (mcore2hf), generate and serve check the checkpoint they read unless the recipe says otherwise."""
    from pai_patch.cli import main

    monkeypatch.setenv("DRY_RUN", "1")
    (tmp_path / "sft" / "checkpoint").mkdir(parents=True)
    (tmp_path / "sft" / "checkpoint" / "latest_checkpointed_iteration.txt").write_text("2\n")
    commands = []
    for extra in ([], [override]):
        assert main(["stage", stage, "recipe=qwen2_5", f"output={tmp_path}", *extra]) == 0
        commands.append([line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")][-1])
    assert "--no-verify" not in commands[0].split()
    assert commands[1].split().count("--no-verify") == 1
    assert [arg for arg in commands[1].split() if arg != "--no-verify"] == commands[0].split()


def test_recipe_get_prints_one_value(capsys: pytest.CaptureFixture[str]) -> None:
    """The converter wrappers take their default output format from it (`recipe get R convert.format`)."""
    import argparse

    from pai_patch.recipes.cli import run

    def get(key: str, *overrides: str) -> str:
        run(argparse.Namespace(action="get", name="deepseek_v2", key=key, overrides=list(overrides)))
        return capsys.readouterr().out.strip()

    assert get("convert.format", "size=A2.4B") == "torch_dist" and get("convert.hf") == "null"
    assert get("parallel.sequence_parallel", "sp=true") == "true"
    with pytest.raises(ConfigError, match="'convert' is a section; name one of its keys: hf, format"):
        get("convert")
    with pytest.raises(ConfigError, match="'convert.nosuch': no such key"):
        get("convert.nosuch")


def test_lr_shorthand_sets_the_training_stage_being_run() -> None:
    recipe = load_recipe("qwen2_5", ["lr=1e-5", "min_lr=1e-6"], "sft")
    assert recipe.sft.optim == {"lr": 1e-5, "min_lr": 1e-6} and recipe.pretrain.optim["lr"] == 3e-3
    with pytest.raises(ConfigError, match=r"lr= sets the training stage being run .* sft\.optim\.lr=1e-05"):
        load_recipe("qwen2_5", ["lr=1e-5"])
