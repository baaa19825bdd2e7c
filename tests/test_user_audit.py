"""Regressions found by following README.md and docs/ as a new user, command by command."""

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


def llama_finetune(train: str, valid: str, epochs: str, out: str, batch: str = "1") -> list[str]:
    """Seed 002's run_finetune_megatron_llama.sh example (22 arguments), with local paths."""
    return ["dsw", "/root/Megatron-LM-230512", "/workspace/PAI-Megatron-Patch", "7B", batch, "1e-5", "1e-6", "2048",
            "80", "0", "bf16", "1", "1", "sel", "true", "false", "false", train, valid, "/mnt/ckpt", epochs, out]


def llama_pretrain(data: str, out: str) -> list[str]:
    """Seed 002's run_pretrain_megatron_llama.sh example (24 arguments), with local paths."""
    return ["dsw", "/root/Megatron-LM-230512", "/workspace/PAI-Megatron-Patch", "7B", "1", "8", "1e-5", "1e-6",
            "2048", "80", "0", "fp16", "1", "1", "sel", "true", "false", "false", "100000", data, "/mnt/ckpt",
            "100000000", "10000", out]


def _resolved_train(script: str, argv: list[str]) -> dict:
    stage, overrides, _ = translate(script, argv, {})
    recipe = load_recipe(overrides[0].split("=", 1)[1], overrides[1:])
    return vars(train_config(recipe, stage).train)


def test_llama_finetune_epochs_become_iterations(tmp_path: Path) -> None:
    """EPOCH was passed on as sft.train.epochs, a key the recipe schema rejects, so the seed example failed."""
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(250)]))
    job = _resolved_train("run_finetune_megatron_llama",
                          llama_finetune(str(train), str(train), "3", str(tmp_path / "out"), batch="4"))  # 7B: warmup 100
    assert job["train_iters"] == 188 and job["global_batch_size"] == 4  # ceil(3 epochs x 250 samples / 4)
    shipped = _resolved_train("run_finetune_megatron_llama",
                              llama_finetune(str(CORPUS / "sft_train.json"), str(CORPUS / "sft_valid.json"), "2",
                                             str(tmp_path / "out")))
    assert shipped["train_iters"] == 6000  # 3000 samples, two epochs, batch 1


def test_llama_finetune_batches_over_data_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BATCH_SIZE is per GPU: the global batch was set to it, so 8 data-parallel GPUs could not split it
    ("global batch 1 must divide by micro batch * DP"), and EPOCH counted iterations of one GPU's batch."""
    import torch

    from pai_patch.recipes.stages import _validate

    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(2000)]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    dsw = llama_finetune(str(train), str(train), "3", str(tmp_path / "out"), batch="2")
    dlc = ["dlc", *dsw[1:11], "2", *dsw[12:]]  # TP=2 on 2 nodes x 8 GPUs: DP=8
    dlc_env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "10.0.0.1", "KUBERNETES_CONTAINER_RESOURCE_GPU": "8"}
    for argv, env in ((dsw, {}), (dlc, dlc_env)):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        stage, overrides, _ = translate("run_finetune_megatron_llama", argv, env)
        recipe = load_recipe("llama2", overrides[1:])
        cfg = train_config(recipe, stage)
        assert (cfg.train.global_batch_size, cfg.train.train_iters) == (16, 375)  # 2 x DP=8; 3 x 2000 / 16
        _validate(recipe, cfg)


def test_llama_finetune_missing_train_file_is_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "nosuch.json")
    with pytest.raises(FileNotFoundError, match="nosuch.json: no such input file"):
        translate("run_finetune_megatron_llama", llama_finetune(missing, missing, "1", str(tmp_path)), {})
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ConfigError, match="empty.json: no samples"):
        translate("run_finetune_megatron_llama", llama_finetune(str(empty), str(empty), "1", str(tmp_path)), {})


def test_llama_pretrain_seed_example_resolves(tmp_path: Path) -> None:
    job = _resolved_train("run_pretrain_megatron_llama", llama_pretrain(str(tmp_path / "wudao"), str(tmp_path)))
    assert job["train_tokens"] == 100000000 and job["train_iters"] is None and job["precision"] == "fp16"


@pytest.mark.slow  # imports deepspeed in a subprocess
def test_hf_deepspeed_launcher_reads_paths_relative_to_the_caller(tmp_path: Path) -> None:
    """run_ds_train_huggingface_llama.sh changed into the repository first, so relative paths failed."""
    from pai_patch.recipes.hf_init import write_random_hf

    write_random_hf("llama2", "tiny", tmp_path / "ckpt", "shipped")
    (tmp_path / "train.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 4))
    (tmp_path / "valid.json").write_text("{not json\n")  # stops the run right after the training data is read
    result = subprocess.run(["bash", str(ROOT / "recipes/llama2/run_ds_train_huggingface_llama.sh"), "dsw", "7B",
                             "1", "1", "1e-5", "64", "bf16", "1", "false", "train.json", "valid.json", "ckpt", "1",
                             "out"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: valid.json:1: not valid JSON (Expecting property name " \
                                                     "enclosed in double quotes)"


def test_dry_run_pipeline_prints_every_stage(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """`DRY_RUN=1 make ... pipeline` stopped at export with 'no training checkpoint' (nothing was trained)."""
    from pai_patch.recipes.stages import run_stage

    monkeypatch.setenv("DRY_RUN", "1")
    run_stage("pipeline", ["recipe=qwen2_5", f"output={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert f"--mcore {tmp_path / 'run' / 'sft' / 'checkpoint'}" in out.split(": generate (")[1]
    # each training job loads what the stage before it would write (it showed "load": null)
    pretrain, sft = out.split(": pretrain (")[1].split(": sft (")
    assert f'"load": "{tmp_path / "run" / "mcore_base"}"' in pretrain
    assert f'"load": "{tmp_path / "run" / "pretrain" / "checkpoint"}"' in sft
    assert "convert mcore2hf" in out and not (tmp_path / "run").exists()  # printed, nothing written


def test_generate_progress_bar_only_on_the_writing_rank(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`generate --tp 2` printed two interleaved progress bars, one per TP rank."""
    from pai_patch.data.tokenizer import load_tokenizer
    from pai_patch.generation.decoders import HFDecoder
    from pai_patch.generation.engine import generate_file
    from pai_patch.generation.sampling import SamplingParams
    from tests.test_generate_parity import tiny_hf

    decoder, tokenizer = HFDecoder(tiny_hf("qwen2_5")), load_tokenizer("shipped")
    params = SamplingParams(top_k=1, max_new_tokens=2)
    generate_file(decoder, tokenizer, ["hi"], tmp_path / "other.jsonl", params, write=False)
    assert "generate:" not in capsys.readouterr().err and not (tmp_path / "other.jsonl").exists()
    generate_file(decoder, tokenizer, ["hi"], tmp_path / "rank0.jsonl", params)
    assert "generate: 100%" in capsys.readouterr().err and (tmp_path / "rank0.jsonl").exists()


@pytest.mark.slow  # a subprocess that imports torch
def test_text_generation_launcher_reads_paths_relative_to_the_caller(tmp_path: Path) -> None:
    """Seed 002 passes CHECKPOINT_PATH as ../../../llama2-train, relative to where it runs the script;
    the wrapper changed into the repository first, so such paths pointed elsewhere."""
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ok"}\nnot json\n')  # fails before any model is built
    result = subprocess.run(["bash", str(ROOT / "toolkits/text_generation/run_text_generation_megatron_llama.sh"),
                             "dsw", "/m", "/p", "ckpt", "tiny", "1", "1", "1024", "1024", "0", "fp16", "10", "512",
                             "16", "prompts.jsonl", "out.txt", "0", "1.0", "1.2"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: prompts.jsonl:2: not valid JSON")


@pytest.mark.slow  # trains two iterations of tiny Qwen2.5
def test_pipeline_stops_after_a_training_stage_that_stopped_early(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A SIGTERM'd (or exit_interval) pretrain saves and exits 0; the pipeline went on to sft from the partial run."""
    from pai_patch.recipes.stages import run_stage

    with pytest.raises(SystemExit) as stop:
        run_stage("pipeline", ["recipe=qwen2_5", f"output={tmp_path}", "pretrain.train.train_iters=4",
                               "pretrain.train.exit_interval=2", "pretrain.train.seq_length=32",
                               "pretrain.train.global_batch_size=2", "pretrain.train.warmup_iters=1",
                               "pretrain.train.eval_interval=null"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert f"[pretrain] stopped before iteration 4; run the same command again to resume from {tmp_path}" in out
    assert ": sft (" not in out and not (tmp_path / "pretrain.stamp").exists()
    assert (tmp_path / "pretrain" / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_missing_hf_checkpoint_directory_is_named_as_missing(tmp_path: Path) -> None:
    """A mistyped SRC said 'no *.safetensors files', as if the directory existed."""
    from pai_patch.convert.safetensors_stream import SafetensorsReader

    with pytest.raises(FileNotFoundError, match=r"DeepSeek-V2-Lite: no such directory \(expected an HF checkpoint"):
        SafetensorsReader(tmp_path / "DeepSeek-V2-Lite")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors files"):
        SafetensorsReader(tmp_path)  # exists, but holds no weights


@pytest.mark.slow  # two preprocessing subprocesses
def test_data_scripts_take_the_seeds_trailing_slash(tmp_path: Path) -> None:
    """Seed 000 passes /mnt/deepseek-datasets/ as OUTPUT_DIR; the scripts printed '...datasets//mmap_...'."""
    tokenizer = str(ROOT / "pai_patch" / "assets" / "tokenizer")
    (tmp_path / "corpus.jsonl").write_text('{"text": "a short document"}\n')
    (tmp_path / "sft.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    for script, args in (("pretrain_data_preprocessing/run_make_pretraining_dataset_megatron.sh",
                          ["corpus.jsonl", "DeepSeekV2Tokenizer", "text", "out/", tokenizer]),
                         ("sft_data_preprocessing/run_make_sft_dataset_megatron.sh",
                          ["sft.json", "Qwen2Tokenizer", "alpaca", "64", "out/", tokenizer])):
        result = subprocess.run(["sh", str(ROOT / "toolkits" / script), *args], cwd=tmp_path, capture_output=True,
                                text=True, check=True, env={**os.environ, "WORKERS": "1"})
        assert "out/mmap_" in result.stdout + result.stderr and "//" not in result.stdout + result.stderr
    assert (tmp_path / "out" / "mmap_deepseekv2_datasets_text_document.idx").is_file()
    assert (tmp_path / "out" / "mmap_qwen2_sft_datasets_text_document.idx").is_file()


def test_stale_finished_training_stage_is_refused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """After a finished pretrain, `make ... pretrain pretrain.optim.lr=...` resumed at the last iteration, trained
    nothing, printed 'done: iteration 100 (finished), loss nan' and stamped the stage as made with the new lr."""
    from pai_patch.recipes.stages import run_stage

    monkeypatch.setenv("DRY_RUN", "1")
    checkpoint = tmp_path / "pretrain" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("100\n")  # what a finished 100-iteration run leaves
    (tmp_path / "pretrain.stamp").write_text("fingerprint of the earlier settings\n")
    with pytest.raises(ConfigError, match=f"{checkpoint}: already at iteration 100 of 100, trained with other"):
        run_stage("pretrain", ["recipe=qwen2_5", f"output={tmp_path}", "pretrain.optim.lr=1e-3"])
    run_stage("pretrain", ["recipe=qwen2_5", f"output={tmp_path}", "pretrain.train.train_iters=150"])  # trains on


def test_run_with_nothing_to_train_says_so_instead_of_loss_nan() -> None:
    """Re-running a finished job resumed at its last iteration, trained nothing and ended 'loss nan'."""
    from pai_patch.training.cli import summary_line

    nothing = summary_line({"iteration": 100, "last": None, "stopped": "finished"}, 100)
    assert nothing == "done: already at iteration 100 of 100; nothing was trained"
    trained = summary_line({"iteration": 4, "last": {"loss": 6.78901}, "stopped": "exit_interval 4"}, 10)
    assert trained == "done: iteration 4 (exit_interval 4), loss 6.7890"


def test_training_stage_converts_hf_first_or_says_it_trains_from_scratch(tmp_path: Path, monkeypatch,  # noqa: ANN001
                                                                       capsys) -> None:
    """`make recipe=R hf=DIR pretrain` where convert had not run trained from random weights (job `load: null`)."""
    from pai_patch.recipes.stages import run_stage
    from tests.test_convert_roundtrip import make_hf

    monkeypatch.setenv("DRY_RUN", "1")
    hf = make_hf("qwen2_5", tmp_path / "hf")
    for stage in ("pretrain", "sft"):
        run_stage(stage, ["recipe=qwen2_5", f"hf={hf}", f"output={tmp_path / stage}"])
        out = capsys.readouterr().out
        assert f"[{stage}] nothing to load yet: converting {hf} first" in out
        assert out.index("convert hf2mcore") < out.index('"load": ' + json.dumps(str(tmp_path / stage / "mcore_base")))
    run_stage("pretrain", ["recipe=qwen2_5", f"output={tmp_path / 'tiny'}"])  # the CPU default still trains
    assert "[pretrain] training from scratch: random initialisation (tiny size with no hf=)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="pretrain: size 7B has no checkpoint to start from; pass hf=DIR"):
        run_stage("pretrain", ["recipe=qwen2_5", "size=7B", f"output={tmp_path / '7B'}"])
    run_stage("pretrain", ["recipe=qwen2_5", "size=7B", "from_scratch=true", f"hf={hf}", f"output={tmp_path / '7B'}"])
    out = capsys.readouterr().out
    assert "training from scratch: random initialisation (from_scratch=true)" in out and "convert hf2mcore" not in out


@pytest.mark.slow  # converts and trains two iterations of tiny Qwen2.5
def test_pretrain_in_a_fresh_directory_converts_before_it_trains(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from pai_patch.recipes.stages import run_stage
    from tests.test_convert_roundtrip import make_hf

    hf, out = make_hf("qwen2_5", tmp_path / "hf"), tmp_path / "run"
    run_stage("pretrain", ["recipe=qwen2_5", f"hf={hf}", f"output={out}", "pretrain.train.train_iters=2",
                           "pretrain.train.warmup_iters=1", "pretrain.train.eval_interval=null",
                           "pretrain.train.seq_length=32", "pretrain.train.global_batch_size=2"])
    assert f"[pretrain] nothing to load yet: converting {hf} first" in capsys.readouterr().out
    assert (out / "mcore_base.stamp").is_file()
    assert f"load: {out / 'mcore_base'}" in (out / "pretrain" / "job.yaml").read_text()
    assert (out / "pretrain" / "checkpoint" / "iter_0000002").is_dir()
