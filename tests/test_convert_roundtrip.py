"""HF -> Megatron-Core -> HF reproduces every tensor bit-exactly, for TP/PP/formats/dtypes.

Also the home of the tiny random checkpoints the other ``test_convert_*`` files use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pai_patch.models import get_family
from pai_patch.models.base import ModelSize
from tests.conftest import dense_families

TOKENIZER = Path(__file__).resolve().parents[1] / "pai_patch" / "assets" / "tokenizer"


def make_hf(family_name: str, directory: Path, dtype: torch.dtype = torch.float32, seed: int = 0,
            size: ModelSize | None = None) -> Path:
    """A tiny HF checkpoint with random weights (and the shipped tokenizer), as users would download it."""
    import transformers

    family = get_family(family_name)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(family.hf_config(size or family.size("tiny")))
    with torch.no_grad():  # norms initialise to ones: make them random too, so a swap would show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    model.to(dtype).save_pretrained(directory)
    for path in TOKENIZER.iterdir():
        shutil.copy(path, directory / path.name)
    return directory


def read_hf(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory, read with the reference ``safetensors`` library."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_same_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("hf")
    return {(name, dt): make_hf(name, root / f"{name}-{dt}", getattr(torch, dt))
            for name in dense_families() for dt in ("float32", "bfloat16")}


def round_trip(family_name: str, hf: Path, root: Path, **layout: object) -> Path:
    from pai_patch.convert.engine import hf_to_mcore, mcore_to_hf
    from pai_patch.parallel import model_parallel

    family = get_family(family_name)
    with model_parallel():
        hf_to_mcore(family, None, hf, root / "mcore", **layout)
        mcore_to_hf(family, None, root / "mcore", root / "back", hf, max_shard_bytes=200_000)
    return root / "back"


@pytest.mark.parametrize("family_name", dense_families())
@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_round_trip_fp32_is_bit_exact(hf_dirs, tmp_path, family_name, fmt, tp, pp):
    hf = hf_dirs[(family_name, "float32")]
    back = round_trip(family_name, hf, tmp_path, tp=tp, pp=pp, fmt=fmt)
    assert_same_tensors(read_hf(hf), read_hf(back))
    assert len(list(back.glob("*.safetensors"))) > 1  # sharded, with an index
    if fmt == "legacy":
        ranks = sorted(p.name for p in (tmp_path / "mcore" / "release").iterdir() if p.is_dir())
        assert len(ranks) == tp * pp and ranks[0] == ("mp_rank_00_000" if pp > 1 else "mp_rank_00")


@pytest.mark.parametrize("family_name", dense_families())
@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
def test_round_trip_bf16_stays_bf16(hf_dirs, tmp_path, family_name, fmt):
    hf = hf_dirs[(family_name, "bfloat16")]
    back = round_trip(family_name, hf, tmp_path, tp=2, pp=2, fmt=fmt)
    tensors = read_hf(back)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert_same_tensors(read_hf(hf), tensors)


def test_output_loads_in_transformers_with_config_and_tokenizer(hf_dirs, tmp_path):
    import transformers

    hf = hf_dirs[("qwen2_5", "float32")]
    back = round_trip("qwen2_5", hf, tmp_path, tp=2, fmt="torch_dist")
    model = transformers.AutoModelForCausalLM.from_pretrained(back)
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 4
    assert transformers.AutoTokenizer.from_pretrained(back)("hello")["input_ids"]


def test_te_names_both_ways(hf_dirs, tmp_path):
    """A legacy checkpoint in TE names (fused layer norms, `_extra_state`) converts back, and loads into the local spec."""
    from pai_patch.convert.engine import hf_to_mcore, mcore_to_hf
    from pai_patch.convert.io import load_model_checkpoint
    from pai_patch.convert.legacy import load_file
    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    family, hf = get_family("llama2"), hf_dirs[("llama2", "float32")]
    with model_parallel():
        hf_to_mcore(family, None, hf, tmp_path / "te", fmt="legacy", use_te=True)
        path = tmp_path / "te" / "release" / "mp_rank_00" / "model_optim_rng.pt"
        checkpoint = load_file(path)
        state = checkpoint["model"]
        assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in state
        assert not any(k.endswith("input_layernorm.weight") for k in state)
        state["decoder.layers.0.mlp.linear_fc1._extra_state"] = None  # as TE writes it
        torch.save(checkpoint, path)
        (tmp_path / "te" / "release" / "COMPLETE.json").unlink()  # Megatron-LM writes no marker
        mcore_to_hf(family, None, tmp_path / "te", tmp_path / "back", hf)
        model = family.build(family.size("tiny"), Runtime())
        assert load_model_checkpoint([model], str(tmp_path / "te")) == 0
        norm = read_hf(hf)["model.layers.2.post_attention_layernorm.weight"]
        assert torch.equal(model.decoder.layers[2].pre_mlp_layernorm.weight.detach(), norm)
    assert_same_tensors(read_hf(hf), read_hf(tmp_path / "back"))
    # and the local names written by default load into the same conversion as TE ones
    with model_parallel():
        hf_to_mcore(family, None, hf, tmp_path / "local", fmt="legacy")
    assert "decoder.layers.0.input_layernorm.weight" in load_file(
        tmp_path / "local" / "release" / "mp_rank_00" / "model_optim_rng.pt")["model"]


def test_padded_vocab_untied_and_row_blocks(tmp_path, monkeypatch):
    """A vocabulary that needs padding, an untied output layer, and large tensors moved in row blocks."""
    import dataclasses

    from pai_patch.convert import engine
    from test_convert_parity import in_process_diff

    family = get_family("qwen2_5")
    size = dataclasses.replace(family.size("tiny"), vocab_size=1000, tie_embeddings=False, num_layers=2)
    hf = make_hf("qwen2_5", tmp_path / "hf", size=size)
    monkeypatch.setattr(engine, "BLOCK_BYTES", 64 * 1024)  # the 1024x128 fp32 embedding -> 4 row blocks
    for fmt in ("torch_dist", "legacy"):
        back = round_trip("qwen2_5", hf, tmp_path / fmt, tp=2, fmt=fmt)
        assert_same_tensors(read_hf(hf), read_hf(back))
    assert in_process_diff("qwen2_5", hf, tmp_path / "torch_dist" / "mcore", size) < 1e-4  # loads at TP=1


@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
def test_hf2mcore_copies_tokenizer_and_config(hf_dirs, tmp_path, fmt):
    """The tokenizer travels with the checkpoint, so later stages need no HF directory to find it."""
    from pai_patch.convert.engine import hf_to_mcore
    from pai_patch.parallel import model_parallel

    hf = hf_dirs[("qwen2_5", "float32")]
    with model_parallel():
        hf_to_mcore(get_family("qwen2_5"), None, hf, tmp_path / "mcore", tp=2, fmt=fmt)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / "mcore" / name).read_bytes() == (hf / name).read_bytes(), name
    assert not list((tmp_path / "mcore").glob("*.safetensors"))


def test_mcore2hf_takes_config_and_tokenizer_from_the_checkpoint(hf_dirs, tmp_path):
    """Without --source-hf: the copies hf2mcore (or training) left in the checkpoint, and none of Megatron's files."""
    import transformers

    from pai_patch.convert.engine import hf_to_mcore, mcore_to_hf
    from pai_patch.parallel import model_parallel

    hf, family = hf_dirs[("qwen2_5", "float32")], get_family("qwen2_5")
    with model_parallel():
        hf_to_mcore(family, None, hf, tmp_path / "mcore")
        mcore_to_hf(family, None, tmp_path / "mcore", tmp_path / "back")
    assert_same_tensors(read_hf(hf), read_hf(tmp_path / "back"))
    assert not (tmp_path / "back" / "latest_checkpointed_iteration.txt").exists()
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "back")("hello")["input_ids"]
    (tmp_path / "mcore" / "config.json").unlink()
    with model_parallel(), pytest.raises(FileNotFoundError, match="carries no HF config; pass --source-hf"):
        mcore_to_hf(family, None, tmp_path / "mcore", tmp_path / "again")
