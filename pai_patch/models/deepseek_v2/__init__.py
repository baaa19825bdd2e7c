"""DeepSeek-V2 (Multi-head Latent Attention + DeepSeekMoE) on megatron-core.

Sizes: ``A2.4B`` is DeepSeek-V2-Lite, ``A21B`` is DeepSeek-V2 (236B), values from each
model's published ``config.json``; ``tiny`` keeps every mechanism (MLA with YaRN, shared
plus routed experts, a dense first layer) at a size that trains on a laptop CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch

from pai_patch.models import register
from pai_patch.models.base import ModelFamily, ModelSize, Runtime, with_sdpa_attention
from pai_patch.models.deepseek_v2.size import SIZES, DeepseekV2Size, size_from_hf_config

if TYPE_CHECKING:
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules


@register
class DeepseekV2(ModelFamily):
    name = "deepseek_v2"
    sizes = SIZES
    default_size = "tiny"
    hf_architecture = "DeepseekV2ForCausalLM"
    hf_model_type = "deepseek_v2"
    tokenizer_aliases = ("DeepSeekV2Tokenizer", "DeepseekV2Tokenizer")

    def size_from_hf(self, hf: Mapping[str, Any], name: str = "custom") -> DeepseekV2Size:
        return size_from_hf_config(hf, name)

    def num_routed_experts(self, size: ModelSize) -> int | None:
        assert isinstance(size, DeepseekV2Size), f"{size.name} is not a DeepSeek-V2 size row"
        return size.num_experts

    # ---- megatron-core side ---------------------------------------------------------
    def config_kwargs(self, size: ModelSize, rt: Runtime) -> dict[str, Any]:
        assert isinstance(size, DeepseekV2Size), f"{size.name} is not a DeepSeek-V2 size row"
        kwargs = super().config_kwargs(size, rt)
        kwargs.update(mla_kwargs(size))
        kwargs.update(moe_kwargs(size, rt))
        kwargs.update(rt.extra)  # the recipe has the last word, as in the base class
        return kwargs

    def transformer_config(self, size: ModelSize, rt: Runtime) -> "TransformerConfig":
        from megatron.core.transformer.transformer_config import MLATransformerConfig

        return MLATransformerConfig(**self.config_kwargs(size, rt))

    def block_spec(self, config: "TransformerConfig", rt: Runtime,
                   vp_stage: int | None = None) -> "TransformerBlockSubmodules":
        """Dense first layers and MoE layers (``moe_layer_freq``), MLA in each.

        Without Transformer Engine megatron's ``DotProductAttention`` cannot take K and V
        heads of different widths, so the local spec gets :class:`SDPACoreAttention`; MoE
        layers get :class:`DeepseekV2Router` (DeepSeek-V2's group ranking, see its module) and, in the
        local spec, :class:`GroupedSequentialMLP` (all routed experts in one grouped matmul).

        The local spec's kv down projection becomes a duplicated ``Linear`` as in the TE spec:
        as a column-parallel linear its output is all-gathered and the shared rope key
        ``k_pos_emb``, used by each rank's own heads only, gets no gradient reduction over
        TP, so TP > 1 trains on wrong gradients.  Duplicated, it works on the sequence
        shard and megatron reduces ``k_pos_emb`` on its gather from the sequence-parallel region.
        """
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
        from megatron.core.post_training.modelopt.layers import Linear
        from megatron.core.transformer.moe.experts import SequentialMLP
        from megatron.core.transformer.moe.moe_layer import MoELayer

        from pai_patch.models.deepseek_v2.router import DeepseekV2Router
        from pai_patch.models.grouped_experts import GroupedSequentialMLP

        spec = get_gpt_decoder_block_spec(config, use_transformer_engine=rt.use_te, normalization="RMSNorm",
                                          vp_stage=vp_stage)
        for layer in {id(s): s for s in spec.layer_specs}.values():  # layers share a few spec objects
            if not rt.use_te:
                with_sdpa_attention(layer)
                layer.submodules.self_attention.submodules.linear_kv_down_proj = Linear
            if layer.submodules.mlp.module is MoELayer:
                layer.submodules.mlp.submodules.router = DeepseekV2Router
                experts = layer.submodules.mlp.submodules.experts
                if not rt.use_te and experts.module is SequentialMLP:
                    experts.module = GroupedSequentialMLP
        return spec

    def decoder_spec(self, config: "TransformerConfig", rt: Runtime,
                     vp_stage: int | None) -> "TransformerBlockSubmodules":
        return self.block_spec(config, rt, vp_stage)

    def finish_model(self, model: "GPTModel", config: "TransformerConfig") -> None:
        from megatron.core.post_training.modelopt.layers import Linear

        if config.perform_initialization:  # megatron's Linear keeps torch's default init
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, Linear):
                        config.init_method(module.weight)

    # ---- HF side --------------------------------------------------------------------
    def hf_config(self, size: ModelSize) -> Any:
        from transformers import DeepseekV2Config

        assert isinstance(size, DeepseekV2Size), f"{size.name} is not a DeepSeek-V2 size row"
        grouped = size.num_groups is not None
        return DeepseekV2Config(
            vocab_size=size.vocab_size,
            hidden_size=size.hidden_size,
            intermediate_size=size.ffn_hidden_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_attention_heads,
            num_key_value_heads=size.num_attention_heads,
            max_position_embeddings=size.max_position_embeddings,
            rms_norm_eps=size.norm_eps,
            tie_word_embeddings=size.tie_embeddings,
            attention_bias=False,
            q_lora_rank=size.q_lora_rank,
            kv_lora_rank=size.kv_lora_rank,
            qk_nope_head_dim=size.qk_nope_head_dim,
            qk_rope_head_dim=size.qk_rope_head_dim,
            v_head_dim=size.v_head_dim,
            n_routed_experts=size.num_experts,
            n_shared_experts=size.num_shared_experts,
            num_experts_per_tok=size.moe_topk,
            moe_intermediate_size=size.moe_ffn_hidden_size,
            first_k_dense_replace=size.first_k_dense,
            routed_scaling_factor=size.routed_scaling_factor,
            topk_method="group_limited_greedy" if grouped else "greedy",
            n_group=size.num_groups if grouped else 1,
            topk_group=size.group_topk if grouped else 1,
            norm_topk_prob=False,
            rope_parameters={"rope_type": "yarn", "rope_theta": size.rope_theta, **size.yarn_hf()},
            # the published tokenizer's ids; a toy vocabulary has none of its own
            bos_token_id=100000 if size.vocab_size > 100001 else None,
            eos_token_id=100001 if size.vocab_size > 100001 else None,
            architectures=[self.hf_architecture],
            aux_loss_alpha=size.aux_loss_alpha,
            seq_aux=size.seq_aux,
        )

    def weight_mapping(self):  # noqa: ANN201 - see pai_patch.convert.mapping
        from pai_patch.models.deepseek_v2.mapping import deepseek_v2_mapping

        return deepseek_v2_mapping()


def mla_kwargs(size: DeepseekV2Size) -> dict[str, Any]:
    """Multi-head Latent Attention with DeepSeek's YaRN (``MLATransformerConfig`` names)."""
    return dict(
        multi_latent_attention=True,
        q_lora_rank=size.q_lora_rank,
        kv_lora_rank=size.kv_lora_rank,
        qk_head_dim=size.qk_nope_head_dim,
        qk_pos_emb_head_dim=size.qk_rope_head_dim,
        v_head_dim=size.v_head_dim,
        kv_channels=size.qk_nope_head_dim,
        qk_layernorm=True,  # the local/TE MLA specs put RMSNorm on the q/kv latents only when set
        rope_type="yarn",
        rotary_base=size.rope_theta,
        rotary_scaling_factor=size.rope_factor,
        mscale=size.mscale,
        mscale_all_dim=size.mscale_all_dim,
        original_max_position_embeddings=size.original_max_position_embeddings,
        beta_fast=size.beta_fast,
        beta_slow=size.beta_slow,
    )


def moe_kwargs(size: DeepseekV2Size, rt: Runtime) -> dict[str, Any]:
    """DeepSeekMoE: softmax over all routed experts, then top-k, unnormalised, scaled."""
    on_gpu = torch.cuda.is_available()
    return dict(
        num_moe_experts=size.num_experts,
        moe_router_topk=size.moe_topk,
        moe_ffn_hidden_size=size.moe_ffn_hidden_size,
        moe_shared_expert_intermediate_size=size.num_shared_experts * size.moe_ffn_hidden_size,
        moe_layer_freq=[0] * size.first_k_dense + [1] * (size.num_layers - size.first_k_dense),
        moe_router_score_function="softmax",
        moe_router_pre_softmax=True,  # top-k of the full softmax (HF: softmax, then topk)
        moe_router_topk_scaling_factor=size.routed_scaling_factor,
        moe_router_num_groups=size.num_groups,
        moe_router_group_topk=size.group_topk,
        moe_router_load_balancing_type="seq_aux_loss" if size.seq_aux else "aux_loss",
        moe_aux_loss_coeff=size.aux_loss_alpha,
        moe_router_dtype="fp32",  # HF computes the gate in fp32 (`_keep_in_fp32_modules_strict`)
        moe_token_dispatcher_type="alltoall",
        moe_grouped_gemm=on_gpu and rt.use_te,
        moe_permute_fusion=False,
    )


__all__ = ["DeepseekV2", "DeepseekV2Size", "SIZES"]
