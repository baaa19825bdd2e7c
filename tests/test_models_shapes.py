"""The shared dense pieces take an explicit head width and per-head q/k RMSNorm from the size row."""

from __future__ import annotations

import dataclasses

import torch

from pai_patch.models import get_family
from pai_patch.models.base import Runtime


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    size = get_family("llama2").size("tiny")
    assert size.head_dim == size.hidden_size // size.num_attention_heads and not size.qk_layernorm


def test_explicit_head_dim_and_qk_norm_reach_config_spec_and_mapping() -> None:
    from pai_patch.parallel import model_parallel

    fam = get_family("llama2")
    size = dataclasses.replace(fam.size("tiny"), head_dim=48, qk_layernorm=True)  # 48 != 128 / 4
    rt = Runtime(seq_length=1, extra={"perform_initialization": False})
    with model_parallel(rt), torch.device("meta"):
        model = fam.build(size, rt)
    attention = model.decoder.layers[0].self_attention
    assert attention.linear_qkv.weight.shape == ((4 + 2 * 4) * 48, 128)
    assert attention.q_layernorm.weight.shape == attention.k_layernorm.weight.shape == (48,)
    rules = {rule.mcore for rule in fam.weight_mapping().rules if rule.applies(size, 0)}
    plain = {rule.mcore for rule in fam.weight_mapping().rules if rule.applies(fam.size("tiny"), 0)}
    norms = {f"decoder.layers.{{layer}}.self_attention.{n}_layernorm.weight" for n in "qk"}
    assert rules - plain == norms
