"""DeepSeek-V2's checkpoint layout for the conversion engine (see :mod:`pai_patch.convert.mapping`).

HF names are the on-disk ones (``DeepseekV2ForCausalLM.save_pretrained`` and the published
checkpoints: one ``mlp.experts.{e}.gate_proj`` per expert).  Two layouts coincide so
no reshuffling is needed: ``kv_b_proj`` rows are per head ``[k_nope; v]`` exactly as
megatron's ``linear_kv_up_proj`` reads them, and ``kv_a_proj_with_mqa`` rows are
``[kv latent; k_rope]`` as ``linear_kv_down_proj`` splits them.

The kv down projection is duplicated on every TP rank in both specs (see
``DeepseekV2.block_spec``).  The q down projection is column-parallel in the local
spec and a duplicated ``TELinear`` in the TE spec, which changes only the per-rank
legacy files, not the global tensors of a torch_dist checkpoint.
"""

from __future__ import annotations

from pai_patch.convert.mapping import Fuse, Scope, Split, Stage, TensorRule, WeightMapping
from pai_patch.models.base import ModelSize
from pai_patch.models.deepseek_v2.size import DeepseekV2Size

L = "decoder.layers.{layer}."
H = "model.layers.{layer}."
A = L + "self_attention."
E = L + "mlp.experts.local_experts.{expert}."
HE = H + "mlp.experts.{expert}."


def _q_lora(size: DeepseekV2Size, layer: int | None) -> bool:
    return size.q_lora_rank is not None


def _q_full(size: DeepseekV2Size, layer: int | None) -> bool:
    return size.q_lora_rank is None


def _dense(size: DeepseekV2Size, layer: int | None) -> bool:
    """A dense-MLP layer; with no layer given, whether the model has any."""
    return size.first_k_dense > 0 if layer is None else layer < size.first_k_dense


def _moe(size: DeepseekV2Size, layer: int | None) -> bool:
    return size.first_k_dense < size.num_layers if layer is None else layer >= size.first_k_dense


def _untied(size: ModelSize, layer: int | None) -> bool:
    return not size.tie_embeddings


def _glu(mcore: str, hf_prefix: str, **kwargs: object) -> TensorRule:
    """SwiGLU input projection: HF gate and up, concatenated for megatron's fused fc1."""
    return TensorRule(mcore, (hf_prefix + "gate_proj.weight", hf_prefix + "up_proj.weight"),
                      split=Split.GLU, fuse=Fuse.CONCAT, **kwargs)


def deepseek_v2_mapping() -> WeightMapping:
    return WeightMapping(
        rules=(
            TensorRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",),
                       scope=Scope.MODEL, stage=Stage.FIRST, split=Split.VOCAB),
            TensorRule(L + "input_layernorm.weight", (H + "input_layernorm.weight",)),
            # ---- Multi-head Latent Attention
            TensorRule(A + "linear_q_proj.weight", (H + "self_attn.q_proj.weight",), split=Split.COLUMN,
                       when=_q_full),
            TensorRule(A + "linear_q_down_proj.weight", (H + "self_attn.q_a_proj.weight",), split=Split.COLUMN,
                       when=_q_lora),
            TensorRule(A + "q_layernorm.weight", (H + "self_attn.q_a_layernorm.weight",),
                       te=A + "linear_q_up_proj.layer_norm_weight", when=_q_lora),
            TensorRule(A + "linear_q_up_proj.weight", (H + "self_attn.q_b_proj.weight",), split=Split.COLUMN,
                       when=_q_lora),
            TensorRule(A + "linear_kv_down_proj.weight", (H + "self_attn.kv_a_proj_with_mqa.weight",)),
            TensorRule(A + "kv_layernorm.weight", (H + "self_attn.kv_a_layernorm.weight",),
                       te=A + "linear_kv_up_proj.layer_norm_weight"),
            TensorRule(A + "linear_kv_up_proj.weight", (H + "self_attn.kv_b_proj.weight",), split=Split.COLUMN),
            TensorRule(A + "linear_proj.weight", (H + "self_attn.o_proj.weight",), split=Split.ROW),
            # ---- dense first layers (TE fuses their pre-MLP norm into fc1; MoE layers keep it)
            TensorRule(L + "pre_mlp_layernorm.weight", (H + "post_attention_layernorm.weight",),
                       te=L + "mlp.linear_fc1.layer_norm_weight", when=_dense),
            _glu(L + "mlp.linear_fc1.weight", H + "mlp.", when=_dense),
            TensorRule(L + "mlp.linear_fc2.weight", (H + "mlp.down_proj.weight",), split=Split.ROW, when=_dense),
            # ---- DeepSeekMoE layers: router, shared experts, routed experts (EP-split)
            TensorRule(L + "pre_mlp_layernorm.weight", (H + "post_attention_layernorm.weight",), when=_moe),
            TensorRule(L + "mlp.router.weight", (H + "mlp.gate.weight",), when=_moe),
            _glu(L + "mlp.shared_experts.linear_fc1.weight", H + "mlp.shared_experts.", when=_moe),
            TensorRule(L + "mlp.shared_experts.linear_fc2.weight", (H + "mlp.shared_experts.down_proj.weight",),
                       split=Split.ROW, when=_moe),
            # TE's grouped experts (TEGroupedMLP) hold one GroupedLinear per projection: weight{e} per expert
            _glu(E + "linear_fc1.weight", HE, scope=Scope.EXPERT, when=_moe,
                 te=L + "mlp.experts.linear_fc1.weight{expert}"),
            TensorRule(E + "linear_fc2.weight", (HE + "down_proj.weight",), scope=Scope.EXPERT, split=Split.ROW,
                       te=L + "mlp.experts.linear_fc2.weight{expert}", when=_moe),
            # ---- head
            TensorRule("decoder.final_layernorm.weight", ("model.norm.weight",), scope=Scope.MODEL, stage=Stage.LAST),
            TensorRule("output_layer.weight", ("lm_head.weight",), scope=Scope.MODEL, stage=Stage.LAST,
                       split=Split.VOCAB, when=_untied),
        ),
        num_experts=lambda size: size.num_experts,
        # the config always gives moe_layer_freq as a list, which makes megatron-core key every layer
        stacked_layers=lambda size: False,
    )
