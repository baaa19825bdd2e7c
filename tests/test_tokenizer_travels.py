"""A seed tokenizer class name (``Qwen2Tokenizer``...) with no TOKENIZER_DIR is found where the seeds'
users keep it: the HF checkpoint (``hf=``), else the Megatron checkpoint being loaded (``convert hf2mcore``
and training copy it there); found nowhere, one line names the three places."""

from __future__ import annotations

from pathlib import Path

import pytest

from pai_patch.cli import CliError
from pai_patch.convert.engine import hf_to_mcore
from pai_patch.data.tokenizer import SHIPPED, copy_tokenizer_files
from pai_patch.models import get_family
from pai_patch.parallel import model_parallel
from pai_patch.recipes.resolve import load_recipe, paths, train_config
from pai_patch.recipes.seed_args import translate
from pai_patch.recipes.stages import run_stage, tokenizer_dir
from tests.conftest import run_cli
from tests.test_convert_roundtrip import make_hf
from tests.test_recipes_seeds import qwen_pretrain

NOWHERE = r"Qwen2Tokenizer.*TOKENIZER_DIR\): not given; the HF checkpoint \(hf=\): not given; the checkpoint being loaded"


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF checkpoint holding the shipped tokenizer, as a download holds its own."""
    return make_hf("qwen2_5", tmp_path_factory.mktemp("hf") / "Qwen2.5-tiny")


@pytest.fixture(scope="module")
def converted(hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mcore") / "mcore_base"
    with model_parallel():
        hf_to_mcore(get_family("qwen2_5"), None, hf, out)
    return out


def _recipe(out: Path, *extra: str):  # noqa: ANN202 - a Recipe
    return load_recipe("qwen2_5", ["data.tokenizer=Qwen2Tokenizer", f"output={out}", *extra])


def test_recipe_stage_finds_it_in_hf_then_in_the_converted_checkpoint(hf, converted, tmp_path):
    recipe = _recipe(tmp_path, f"hf={hf}")
    assert tokenizer_dir(recipe, converted) == hf
    assert tokenizer_dir(_recipe(tmp_path), converted) == converted
    with pytest.raises(CliError, match=NOWHERE):
        tokenizer_dir(_recipe(tmp_path), paths(recipe).mcore_base)


def test_data_stage_with_a_seed_name_and_hf(hf, tmp_path):
    run_stage("data", ["recipe=qwen2_5", "data.tokenizer=Qwen2Tokenizer", f"hf={hf}", f"output={tmp_path}"])
    assert (tmp_path / "data" / "pretrain_text_document.idx").is_file()


def test_data_stage_found_nowhere_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(CliError, match=NOWHERE + f": {tmp_path / 'mcore_base'}"):
        run_stage("data", ["recipe=qwen2_5", "data.tokenizer=Qwen2Tokenizer", f"output={tmp_path}"])
    assert list(tmp_path.iterdir()) == []


def test_seed_launcher_job_finds_it_in_pretrain_checkpoint_path(hf, converted, tmp_path):
    """run_mcore_qwen.sh 0.5B ...: the 0.5B row names Qwen2Tokenizer; PRETRAIN_CHECKPOINT_PATH holds its files."""
    stage, overrides, _ = translate("run_mcore_qwen", qwen_pretrain("0.5B", "d", str(tmp_path), str(converted)), {})
    assert train_config(load_recipe("qwen2_5", overrides), stage).tokenizer_dir() == converted
    assert train_config(load_recipe("qwen2_5", [*overrides, f"hf={hf}"]), stage).tokenizer_dir() == hf
    stage, overrides, _ = translate("run_mcore_qwen", qwen_pretrain("0.5B", "d", str(tmp_path)), {})
    with pytest.raises(CliError, match=NOWHERE + ": not given"):
        train_config(load_recipe("qwen2_5", overrides), stage).tokenizer_dir()


def test_training_stage_found_nowhere_stops_before_the_job(corpus_prefix, tmp_path):
    with pytest.raises(CliError, match=NOWHERE):
        run_stage("pretrain", ["recipe=qwen2_5", "data.tokenizer=Qwen2Tokenizer", f"output={tmp_path}",
                               f"pretrain.data.train_path={corpus_prefix}"])
    assert not (tmp_path / "pretrain" / "job.yaml").exists()


def test_generation_uses_the_checkpoint_tokenizer(converted, tmp_path, capsys):
    from pai_patch.generation.loading import load_tokenizer

    grown = tmp_path / "grown"  # the shipped tokenizer with one more token, to tell them apart
    copy_tokenizer_files(SHIPPED, grown)
    tokenizer = load_tokenizer(str(grown))
    tokenizer.add_tokens(["<grown>"])
    tokenizer.save_pretrained(grown)
    ckpt = tmp_path / "ckpt"
    copy_tokenizer_files(grown, ckpt)
    assert len(load_tokenizer(None, mcore=str(ckpt))) == len(load_tokenizer("Qwen2Tokenizer", mcore=str(ckpt))) \
        == len(load_tokenizer("shipped")) + 1
    with pytest.raises(CliError, match="'Qwen2Tokenizer' is the qwen2_5 tokenizer, but the model is llama2"):
        load_tokenizer("Qwen2Tokenizer", mcore=str(ckpt), family="llama2")
    assert load_tokenizer(None, mcore=str(tmp_path)).name_or_path == str(SHIPPED)
    assert f"note: {tmp_path} holds no tokenizer files; using the shipped tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_training_finds_it_in_checkpoint_load_and_saves_it_with_its_checkpoint(layout_start, corpus_prefix, tmp_path):
    run_cli("train", "model.family=qwen2_5", "model.size=tiny", "data.tokenizer=Qwen2Tokenizer",
            f"data.train_path={corpus_prefix}", f"output_dir={tmp_path}", f"checkpoint.load={layout_start}",
            "train.seq_length=32", "train.train_iters=1", "train.global_batch_size=2", "train.micro_batch_size=1")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "checkpoint" / name).read_bytes() == (layout_start / name).read_bytes(), name


def test_a_seed_name_checks_the_model_family(tmp_path, monkeypatch):
    other = r"'DeepSeekV2Tokenizer' is the deepseek_v2 tokenizer, but the model is llama2; name this model's \(LLama"
    with pytest.raises(CliError, match=other):
        train_config(load_recipe("llama2", ["data.tokenizer=DeepSeekV2Tokenizer"]), "pretrain").tokenizer_dir()
    monkeypatch.setenv("DRY_RUN", "1")  # a dry run may not find the files yet, but the family is known
    assert tokenizer_dir(_recipe(tmp_path), tmp_path / "mcore_base") is None
    with pytest.raises(CliError, match=other):
        tokenizer_dir(load_recipe("llama2", ["data.tokenizer=DeepSeekV2Tokenizer"]), tmp_path)
