"""DeepSeek-V2 size rows, parameter counts and layout validation (no forward passes)."""

from __future__ import annotations

import dataclasses

import pytest

from pai_patch.models import get_family
from pai_patch.models.base import Runtime
from pai_patch.models.deepseek_v2 import DeepseekV2Size
from pai_patch.models.params import count_params
from pai_patch.parallel import LayoutError, model_parallel, validate_layout

FAMILY = get_family("deepseek_v2")

# The fields of the published config.json files that define the architecture
# (deepseek-ai/DeepSeek-V2-Lite and deepseek-ai/DeepSeek-V2, remote-code spelling).
_COMMON = {
    "vocab_size": 102400, "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "tie_word_embeddings": False, "attention_bias": False, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "first_k_dense_replace": 1, "aux_loss_alpha": 0.001, "seq_aux": True, "norm_topk_prob": False,
    "scoring_func": "softmax", "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
                                                "mscale": 0.707, "mscale_all_dim": 0.707,
                                                "original_max_position_embeddings": 4096},
}
PUBLISHED_CONFIGS = {
    "A2.4B": {**_COMMON, "hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27,
              "num_attention_heads": 16, "q_lora_rank": None, "n_routed_experts": 64, "moe_intermediate_size": 1408,
              "routed_scaling_factor": 1.0, "topk_method": "greedy", "n_group": 1, "topk_group": 1},
    "A21B": {**_COMMON, "hidden_size": 5120, "intermediate_size": 12288, "num_hidden_layers": 60,
             "num_attention_heads": 128, "q_lora_rank": 1536, "n_routed_experts": 160, "moe_intermediate_size": 1536,
             "routed_scaling_factor": 16.0, "topk_method": "group_limited_greedy", "n_group": 8, "topk_group": 3},
}


def _architecture(size: DeepseekV2Size) -> DeepseekV2Size:
    return dataclasses.replace(size, name="", published_params=None, published_active=None, hf_repo=None)


@pytest.mark.parametrize("name", list(PUBLISHED_CONFIGS))
def test_size_rows_match_published_config(name: str) -> None:
    assert _architecture(FAMILY.size_from_hf(PUBLISHED_CONFIGS[name])) == _architecture(FAMILY.size(name))


@pytest.mark.parametrize("name", list(FAMILY.sizes))
def test_hf_config_reads_back_as_the_same_row(name: str) -> None:
    size = FAMILY.size(name)
    assert _architecture(FAMILY.size_from_hf(FAMILY.hf_config(size).to_dict())) == _architecture(size)


# Totals: the published safetensors indexes (total_size in bf16 bytes / 2): DeepSeek-V2-Lite
# 31,412,968,448 B; DeepSeek-V2(-Chat-0628) 471,482,869,760 B.  Active counts are derived
# from the config (dense parts + shared + top-6 routed experts, embeddings and head).
@pytest.mark.parametrize("name,total,active,card_active", [
    ("A2.4B", 15_706_484_224, 2_661_150_208, (2.4e9, 2.5e9)),  # the card truncates: 2.451B -> "2.4B"
    ("A21B", 235_741_434_880, 21_375_800_320, (20.5e9, 21.5e9)),
])
def test_param_counts_match_published(name: str, total: int, active: int, card_active: tuple[float, float]) -> None:
    size = FAMILY.size(name)
    counts = count_params(FAMILY, size)
    assert counts["params_total"] == total == size.published_params
    assert counts["params_active"] == active
    # The model cards' "2.4B / 21B activated" leave the input embedding out (the output
    # head is a per-token matmul and counts): 2.451B and 20.85B.
    low, high = card_active
    assert low <= counts["params_active"] - counts["params_embedding"] < high


def test_tiny_has_every_layer_kind() -> None:
    from megatron.core.transformer.moe.moe_layer import MoELayer

    size = FAMILY.size("tiny")
    config = FAMILY.transformer_config(size, Runtime())
    assert config.moe_layer_freq == [0] + [1] * (size.num_layers - 1)
    assert config.moe_shared_expert_intermediate_size == 2 * size.moe_ffn_hidden_size
    with model_parallel():
        spec = FAMILY.block_spec(config, Runtime())
    kinds = [layer.submodules.mlp.module is MoELayer for layer in spec.layer_specs]
    assert kinds == [False] + [True] * (size.num_layers - 1)


@pytest.mark.parametrize("rt,world,rule", [
    (Runtime(ep=3), 3, "EP=3 must divide the routed experts (8)"),
    (Runtime(tp=8), 8, "TP=8 must divide the attention heads (4)"),
    (Runtime(tp=2, ep=2), 3, "world size 3 must equal TP*PP*CP*DP"),
    (Runtime(ep=4), 2, "EP=4 must divide DP*CP = 2*1"),
])
def test_impossible_layouts_fail_before_build(rt: Runtime, world: int, rule: str) -> None:
    size = FAMILY.size("tiny")
    with pytest.raises(LayoutError, match=rule.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        validate_layout(size, rt, world, num_experts=size.num_experts)
