"""The Llama-style checkpoint layout shared by Qwen2.5, Qwen3 and Llama2 (see :mod:`pai_patch.convert.mapping`).

Qwen2.5 differs by its q/k/v biases, Qwen3 by its per-head q/k RMSNorm, and the small
sizes by tied embeddings; all are read from the size row, so one mapping serves every
dense family.
"""

from __future__ import annotations

from pai_patch.convert.mapping import Fuse, Scope, Split, Stage, TensorRule, WeightMapping
from pai_patch.models.base import ModelSize

L = "decoder.layers.{layer}."
H = "model.layers.{layer}."


def _has_qkv_bias(size: ModelSize, layer: int | None) -> bool:
    return size.qkv_bias


def _has_qk_layernorm(size: ModelSize, layer: int | None) -> bool:
    return size.qk_layernorm


def _untied(size: ModelSize, layer: int | None) -> bool:
    return not size.tie_embeddings


def dense_mapping() -> WeightMapping:
    qkv = tuple(f"{H}self_attn.{p}_proj" for p in "qkv")
    # TE fuses the norms into the next linear; megatron's local spec saves torch_dist under those names too
    attn_norm, mlp_norm = L + "self_attention.linear_qkv.layer_norm_weight", L + "mlp.linear_fc1.layer_norm_weight"
    return WeightMapping(
        rules=(
            TensorRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",),
                       scope=Scope.MODEL, stage=Stage.FIRST, split=Split.VOCAB),
            TensorRule(L + "input_layernorm.weight", (H + "input_layernorm.weight",), te=attn_norm, dist=attn_norm),
            TensorRule(L + "self_attention.linear_qkv.weight", tuple(f"{n}.weight" for n in qkv),
                       split=Split.COLUMN, fuse=Fuse.QKV),
            TensorRule(L + "self_attention.linear_qkv.bias", tuple(f"{n}.bias" for n in qkv),
                       split=Split.COLUMN, fuse=Fuse.QKV, when=_has_qkv_bias),
            # one [head_dim] norm shared by every head: each TP rank holds all of it
            TensorRule(L + "self_attention.q_layernorm.weight", (H + "self_attn.q_norm.weight",),
                       when=_has_qk_layernorm),
            TensorRule(L + "self_attention.k_layernorm.weight", (H + "self_attn.k_norm.weight",),
                       when=_has_qk_layernorm),
            TensorRule(L + "self_attention.linear_proj.weight", (H + "self_attn.o_proj.weight",), split=Split.ROW),
            TensorRule(L + "pre_mlp_layernorm.weight", (H + "post_attention_layernorm.weight",), te=mlp_norm,
                       dist=mlp_norm),
            TensorRule(L + "mlp.linear_fc1.weight", (H + "mlp.gate_proj.weight", H + "mlp.up_proj.weight"),
                       split=Split.GLU, fuse=Fuse.CONCAT),
            TensorRule(L + "mlp.linear_fc2.weight", (H + "mlp.down_proj.weight",), split=Split.ROW),
            TensorRule("decoder.final_layernorm.weight", ("model.norm.weight",), scope=Scope.MODEL, stage=Stage.LAST),
            TensorRule("output_layer.weight", ("lm_head.weight",), scope=Scope.MODEL, stage=Stage.LAST,
                       split=Split.VOCAB, when=_untied),
        ),
    )
