"""Virtual pipeline (MP_VP) and an uneven first stage (MP_PP0_LAYERS) outside of training runs.

The layer -> (stage, chunk) map conversion uses is megatron-core's own; legacy checkpoints
written for such layouts hold Megatron-LM's ``model0``, ``model1``, ... chunks and convert
back bit-exactly; impossible layouts fail before launch naming their rule; the seeds'
MP_VP (layers per virtual stage, as Megatron-LM's flag) becomes megatron-core's chunk count.
The training runs themselves are in ``test_train_parallel.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pai_patch.configio import ConfigError
from pai_patch.convert import engine, legacy
from pai_patch.convert.layout import Group, StageMap, groups
from pai_patch.models import get_family
from pai_patch.models.base import Runtime
from pai_patch.parallel import LayoutError, validate_layout
from pai_patch.recipes.seed_args import translate
from tests.test_recipes_seeds import qwen_pretrain

LAYOUTS = [  # (layers, PP, VP, first-stage layers)
    (4, 2, None, None), (4, 2, 2, None), (4, 2, None, 1), (4, 2, None, 3), (16, 4, 2, None), (14, 4, 2, 2),
    (10, 3, None, 4), (12, 3, 2, 4),
]


@pytest.mark.parametrize(("layers", "pp", "vp", "pp0"), LAYOUTS)
def test_stage_map_is_megatron_cores_layer_assignment(layers: int, pp: int, vp: int | None, pp0: int | None) -> None:
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    config = TransformerConfig(num_layers=layers, hidden_size=64, num_attention_heads=4,
                               pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vp,
                               num_layers_in_first_pipeline_stage=pp0, pipeline_dtype=torch.float32)
    stages = StageMap(layers, pp, vp or 1, pp0)
    seen = []
    for stage in range(pp):
        for chunk in range(vp or 1):
            held = stages.layers(stage, chunk)
            assert held.start == get_transformer_layer_offset(config, vp_stage=chunk if vp else None, pp_rank=stage)
            seen += list(held)
            for layer in held:
                assert stages.place(Group(f"layer {layer}", (), layer=layer)) == (stage, chunk, held.start)
    assert sorted(seen) == list(range(layers))


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pai_patch.recipes.hf_init import write_random_hf

    out = tmp_path_factory.mktemp("hf") / "qwen"
    write_random_hf("qwen2_5", "tiny", out, "shipped", seed=3)
    return out


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize(("vp", "pp0"), [(2, None), (None, 1), (None, 3)], ids=["vp2", "pp0-1", "pp0-3"])
def test_legacy_conversion_round_trips_virtual_and_uneven_layouts(hf: Path, tmp_path: Path, vp: int | None,
                                                                  pp0: int | None) -> None:
    family = get_family("qwen2_5")
    engine.hf_to_mcore(family, "tiny", hf, tmp_path / "mcore", pp=2, vp=vp, pp0_layers=pp0, fmt="legacy")
    iter_dir = tmp_path / "mcore" / "release"
    layout = legacy.LegacyLayout.detect(iter_dir)
    assert layout == legacy.LegacyLayout(1, 2, 1, vp or 1, pp0)
    hf_weights = _tensors(hf)
    stages = StageMap(4, 2, vp or 1, pp0)
    for stage in range(2):
        path = layout.path(iter_dir, 0, stage, 0)
        chunks = legacy.model_state(legacy.load_file(path), path)
        assert len(chunks) == (vp or 1)
        for chunk, state in enumerate(chunks):
            held = stages.layers(stage, chunk)
            local = sorted({int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")})
            assert local == list(range(len(held)))  # layers numbered from 0 in every chunk
            for number, layer in enumerate(held):  # and each one is the HF layer megatron puts there
                assert torch.equal(state[f"decoder.layers.{number}.mlp.linear_fc2.weight"],
                                   hf_weights[f"model.layers.{layer}.mlp.down_proj.weight"])
    engine.mcore_to_hf(family, "tiny", tmp_path / "mcore", tmp_path / "back", hf)
    back = _tensors(tmp_path / "back")
    assert sorted(back) == sorted(hf_weights)
    assert all(torch.equal(back[name], hf_weights[name]) for name in hf_weights)


def test_legacy_file_with_the_wrong_chunk_count_is_named(hf: Path, tmp_path: Path) -> None:
    family = get_family("qwen2_5")
    engine.hf_to_mcore(family, "tiny", hf, tmp_path / "mcore", pp=2, vp=2, fmt="legacy")
    path = tmp_path / "mcore" / "release" / "mp_rank_00_001" / legacy.FILE
    saved = torch.load(path, weights_only=True)
    del saved["model1"]
    torch.save(saved, path)
    (tmp_path / "mcore" / "release" / "COMPLETE.json").unlink()  # edited as by another tool, which writes no marker
    with pytest.raises(ValueError, match=r"mp_rank_00_001/model_optim_rng.pt: 1 model chunk\(s\), but .* VP=2"):
        engine.mcore_to_hf(family, "tiny", tmp_path / "mcore", tmp_path / "back", hf)


@pytest.mark.parametrize(("rt", "world", "rule"), [
    (Runtime(pp=1, vp=2), 1, "virtual pipeline (MP_VP) requires PP > 1"),
    (Runtime(pp=2, vp=4), 2, "PP*VP=2*4 must divide the layers (4)"),
    (Runtime(pp=2, pp0_layers=4), 2, "MP_PP0_LAYERS=4: the other 0 layers"),
    (Runtime(pp=3, pp0_layers=1), 3, "MP_PP0_LAYERS=1: the other 3 layers must split evenly over PP-1=2 stages"),
    (Runtime(pp=2, vp=2, pp0_layers=1), 2, "VP=2 must divide every stage's layers (first stage 1, others 3)"),
    (Runtime(pp=2, vp=0), 2, "VP must be >= 1"),
])
def test_impossible_vp_and_pp0_layouts_name_their_rule(rt: Runtime, world: int, rule: str) -> None:
    with pytest.raises(LayoutError, match=r"^invalid parallel layout: " + rule.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        validate_layout(get_family("qwen2_5").size("tiny"), rt, world)


def test_layout_rules_also_guard_conversion(hf: Path, tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="VP=2 must divide every stage's layers"):
        engine.hf_to_mcore(get_family("qwen2_5"), "tiny", hf, tmp_path / "mcore", pp=2, vp=2, pp0_layers=1,
                           fmt="legacy")
    assert not (tmp_path / "mcore").exists()


def test_seed_mp_vp_is_layers_per_virtual_stage(tmp_path: Path) -> None:
    argv = qwen_pretrain("tiny", str(tmp_path / "data"), str(tmp_path / "out"))
    argv[10] = "2"  # PP
    _, overrides, _ = translate("run_mcore_qwen", argv, {"MP_VP": "1", "MP_PP0_LAYERS": "2"})
    assert "parallel.vp=2" in overrides and "parallel.pp0_layers=2" in overrides  # 4 layers / PP 2 / 1 per chunk
    _, overrides, _ = translate("run_mcore_qwen", argv, {"MP_VP": "2"})  # one chunk per stage: no interleaving
    assert not any(o.startswith("parallel.vp=") for o in overrides)
    with pytest.raises(ConfigError, match="MP_VP=3: layers per virtual pipeline stage must divide"):
        translate("run_mcore_qwen", argv, {"MP_VP": "3"})


def test_groups_cover_the_model_once() -> None:
    """Every group of tiny Qwen2.5 lands on exactly one (stage, chunk); the output layer on the last."""
    size = get_family("qwen2_5").size("tiny")
    stages = StageMap(size.num_layers, 2, 2)
    placed = [stages.place(g)[:2] for g in groups(get_family("qwen2_5").weight_mapping(), size)]
    assert placed[0] == (0, 0) and placed[-1] == (1, 1)
    assert placed[1:-1] == [(0, 0), (1, 0), (0, 1), (1, 1)]
