"""DeepSeek-V2 through the conversion engine: HF -> Megatron-Core (TP=2, EP=2) -> HF, bit-exact.

The tiny checkpoint and the low-rank-Q variant cover every rule of the mapping (full and
low-rank query, kv latent and its norm, dense first layer, router, shared and routed experts).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pai_patch.models import get_family
from test_convert_roundtrip import assert_same_tensors, make_hf, read_hf

FAMILY = get_family("deepseek_v2")
SIZES = {"tiny": FAMILY.size("tiny"),
         "q_lora": dataclasses.replace(FAMILY.size("tiny"), name="q_lora", q_lora_rank=48, num_groups=4, group_topk=2)}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deepseek_hf")
    return {name: make_hf("deepseek_v2", root / name, size=size) for name, size in SIZES.items()}


@pytest.mark.parametrize("variant", list(SIZES))
@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
def test_round_trip_tp2_ep2_is_bit_exact(hf_dirs: dict[str, Path], tmp_path: Path, variant: str, fmt: str) -> None:
    from pai_patch.convert.engine import hf_to_mcore, mcore_to_hf
    from pai_patch.parallel import model_parallel

    hf = hf_dirs[variant]
    with model_parallel():
        hf_to_mcore(FAMILY, None, hf, tmp_path / "mcore", tp=2, ep=2, fmt=fmt)
        mcore_to_hf(FAMILY, None, tmp_path / "mcore", tmp_path / "back", hf)
    assert_same_tensors(read_hf(hf), read_hf(tmp_path / "back"))
    if fmt == "legacy":  # two TP ranks x two EP ranks, experts split between the EP ranks
        files = sorted(p.parent.name for p in (tmp_path / "mcore").rglob("model_optim_rng.pt"))
        assert files == ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]


def te_spec_dist_keys(size) -> set[str]:  # noqa: ANN001 - a DeepseekV2Size
    """The torch_dist keys the TE spec declares for ``size`` (its mapping's TE names), without building TE."""
    from pai_patch.convert.mapping import Scope

    keys = set()
    for rule in FAMILY.weight_mapping().rules:
        # TE's grouped experts save under SequentialMLP's torch_dist keys (experts stacked on one axis)
        te = rule.te if rule.scope is not Scope.EXPERT else None
        name = (te or rule.dist or rule.mcore).replace("local_experts.{expert}.", "experts.")
        for layer in range(size.num_layers) if "{layer}" in name else [None]:
            if rule.applies(size, layer):
                keys.add(name if layer is None else name.replace("{layer}", str(layer)))
    return keys


@pytest.mark.parametrize("variant", list(SIZES))
def test_torch_dist_keys_translate_between_the_local_and_te_mla_specs(variant: str) -> None:
    """A local-spec (CPU) torch_dist checkpoint loads into the TE spec and back: every key of the local
    model's sharded state dict finds its TE name among the TE spec's keys, and the other way round."""
    from pai_patch.convert.io import dist_key
    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    size = SIZES[variant]
    with model_parallel():
        sharded = FAMILY.build(size, Runtime(seq_length=64)).sharded_state_dict().values()
    local = {s.key for s in sharded if not s.key.endswith("._extra_state")}  # objects; loaded when present
    te = te_spec_dist_keys(size)
    assert {"decoder.layers.0.self_attention.linear_kv_up_proj.layer_norm_weight",
            "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"} <= te - local
    assert {"decoder.layers.0.self_attention.kv_layernorm.weight", "decoder.layers.0.pre_mlp_layernorm.weight"} \
        <= local - te
    assert [key for key in local if dist_key(key, te) is None] == []
    assert [key for key in te if dist_key(key, local) is None] == []
    assert dist_key("decoder.layers.1.pre_mlp_layernorm.weight", te) == "decoder.layers.1.pre_mlp_layernorm.weight"


def test_legacy_te_names_cover_grouped_experts_both_ways(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    """``--use-te`` writes TE's grouped-expert names (``mlp.experts.linear_fc1.weight{e}``, EP-local e) and
    the fused MLA norms; the file converts back bit-exactly and loads into the local spec."""
    import torch

    from pai_patch.convert.engine import hf_to_mcore, mcore_to_hf
    from pai_patch.convert.io import load_model_checkpoint
    from pai_patch.convert.legacy import load_file
    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    hf = hf_dirs["tiny"]
    with model_parallel():
        hf_to_mcore(FAMILY, None, hf, tmp_path / "te", fmt="legacy", use_te=True)
        state = load_file(tmp_path / "te" / "release" / "mp_rank_00" / "model_optim_rng.pt")["model"]
        assert {"decoder.layers.1.mlp.experts.linear_fc1.weight7", "decoder.layers.1.mlp.experts.linear_fc2.weight0",
                "decoder.layers.0.self_attention.linear_kv_up_proj.layer_norm_weight"} <= set(state)
        assert not [k for k in state if "local_experts" in k or "kv_layernorm" in k]
        mcore_to_hf(FAMILY, None, tmp_path / "te", tmp_path / "back", hf)
        model = FAMILY.build(SIZES["tiny"], Runtime(seq_length=64))
        assert load_model_checkpoint([model], str(tmp_path / "te")) == 0
        expert = model.decoder.layers[1].mlp.experts.local_experts[7].linear_fc2.weight.detach()
        assert torch.equal(expert, state["decoder.layers.1.mlp.experts.linear_fc2.weight7"])
    assert_same_tensors(read_hf(hf), read_hf(tmp_path / "back"))
