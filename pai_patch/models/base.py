"""What every model family provides: its size table, its Megatron-Core config and spec, its HF side.

A family is one folder under ``pai_patch/models``; it subclasses :class:`ModelFamily`
and registers itself with :func:`pai_patch.models.register`.  Everything else in the
project (training, conversion, generation, ``models info``) goes through this interface,
so adding a model means adding a folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # heavy imports stay out of module import time (`make help`, CLI parsing)
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.spec_utils import ModuleSpec

    from pai_patch.convert.mapping import WeightMapping

RECOMPUTE_MODES = ("false", "sel", "full", "offload")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")


@dataclass(frozen=True)
class ModelSize:
    """One row of published hyper-parameters (from the model's HF ``config.json``)."""

    name: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    norm_eps: float
    tie_embeddings: bool
    qkv_bias: bool
    #: exact parameter count of the published checkpoint (its safetensors index); None for `tiny`
    published_params: int | None = None
    published_active: int | None = None
    hf_repo: str | None = None
    #: per-head width of q/k/v; None = hidden_size // num_attention_heads (Qwen3 publishes its own, e.g. 128 at
    #: hidden 1024 with 16 heads)
    head_dim: int | None = None
    #: RMSNorm over each query and key head before RoPE (Qwen3's q_norm/k_norm)
    qk_layernorm: bool = False

    def __post_init__(self) -> None:
        if self.head_dim is None:  # frozen: fill the derived default once, so readers always see an int
            object.__setattr__(self, "head_dim", self.default_head_dim())

    def default_head_dim(self) -> int:
        """The head width when the row does not name one."""
        return self.hidden_size // self.num_attention_heads

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Runtime:
    """How a model is laid out and computed: what the recipe decides, not the checkpoint."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int | None = None
    vp: int | None = None
    pp0_layers: int | None = None
    sequence_parallel: bool = False
    precision: str = "fp32"
    recompute: str = "false"
    recompute_layers: int = 1
    use_te: bool = False
    flash_attn: bool = False
    seq_length: int = 4096
    init_std: float = 0.02
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def params_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # a broken TE install must not break the CPU path
        return False
    return torch.cuda.is_available()


class ModelFamily:
    """A decoder-only model family on megatron-core's ``GPTModel``."""

    name: ClassVar[str]
    sizes: ClassVar[dict[str, ModelSize]]
    default_size: ClassVar[str] = "tiny"
    hf_architecture: ClassVar[str]
    hf_model_type: ClassVar[str]
    #: names the seed scripts use for this family's tokenizer (`Qwen2Tokenizer`, ...)
    tokenizer_aliases: ClassVar[tuple[str, ...]] = ()

    # ---- sizes -----------------------------------------------------------------------
    def size(self, name: str | None) -> ModelSize:
        name = name or self.default_size
        if name not in self.sizes:
            raise KeyError(f"unknown size {name!r} for {self.name}; valid sizes: {', '.join(self.sizes)}")
        return self.sizes[name]

    def size_from_hf(self, hf: Mapping[str, Any], name: str = "custom") -> ModelSize:
        """A size row from an HF ``config.json``, so any checkpoint of the family converts."""
        heads = hf["num_attention_heads"]
        return ModelSize(
            name=name,
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_query_groups=hf.get("num_key_value_heads") or heads,
            ffn_hidden_size=hf["intermediate_size"],
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rope_theta=float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=self._hf_qkv_bias(hf),
            head_dim=hf.get("head_dim"),
            qk_layernorm=self._hf_qk_layernorm(hf),
        )

    def _hf_qkv_bias(self, hf: Mapping[str, Any]) -> bool:
        return bool(hf.get("attention_bias", False))

    def _hf_qk_layernorm(self, hf: Mapping[str, Any]) -> bool:
        """Whether the family normalises q/k heads; HF configs have no switch for it (the class decides)."""
        return False

    def num_routed_experts(self, size: ModelSize) -> int | None:
        """Routed experts per MoE layer (None for dense families); EP must divide it."""
        return None

    # ---- megatron-core side ---------------------------------------------------------
    def config_kwargs(self, size: ModelSize, rt: Runtime) -> dict[str, Any]:
        """TransformerConfig arguments; families extend this (MLA, MoE)."""
        on_gpu = torch.cuda.is_available()
        kwargs: dict[str, Any] = dict(
            num_layers=size.num_layers,
            hidden_size=size.hidden_size,
            num_attention_heads=size.num_attention_heads,
            num_query_groups=size.num_query_groups,
            ffn_hidden_size=size.ffn_hidden_size,
            kv_channels=size.head_dim,
            normalization="RMSNorm",
            layernorm_epsilon=size.norm_eps,
            gated_linear_unit=True,
            activation_func=F.silu,
            add_bias_linear=False,
            add_qkv_bias=size.qkv_bias,
            qk_layernorm=size.qk_layernorm,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=rt.init_std,
            tensor_model_parallel_size=rt.tp,
            pipeline_model_parallel_size=rt.pp,
            virtual_pipeline_model_parallel_size=rt.vp,
            context_parallel_size=rt.cp,
            expert_model_parallel_size=rt.ep,
            expert_tensor_parallel_size=rt.etp,
            sequence_parallel=rt.sequence_parallel,
            params_dtype=rt.params_dtype,
            bf16=rt.precision in ("bf16", "fp8"),
            fp16=rt.precision == "fp16",
            fp8="hybrid" if rt.precision == "fp8" else None,
            pipeline_dtype=rt.params_dtype,
            use_cpu_initialization=not on_gpu,
            # Fused kernels are CUDA-only; on CPU megatron falls back to the unfused paths.
            bias_activation_fusion=on_gpu,
            bias_dropout_fusion=on_gpu,
            masked_softmax_fusion=on_gpu,
            apply_rope_fusion=on_gpu and rt.use_te,
            # the unfused loss makes several fp32 passes over the [s, b, vocab] logits (5 GB for Qwen2.5 at
            # seq 4096, micro batch 2); the fused one (TE's kernel, else megatron's compiled one) makes fewer
            cross_entropy_loss_fusion=on_gpu,
            cross_entropy_fusion_impl="te" if rt.use_te else "native",
            gradient_accumulation_fusion=False,
            # apex's persistent kernel only: TE norms ignore it and megatron's torch norm (local spec on a
            # GPU without apex) asserts it off
            persist_layer_norm=False,
            # megatron's default "full" is deprecated (it warns on every config); [] is the same whole-layer scope
            cuda_graph_scope=[],
        )
        if rt.pp0_layers is not None and rt.pp > 1:
            kwargs["num_layers_in_first_pipeline_stage"] = rt.pp0_layers
        kwargs.update(recompute_kwargs(rt))
        kwargs.update(rt.extra)
        return kwargs

    def transformer_config(self, size: ModelSize, rt: Runtime) -> "TransformerConfig":
        from megatron.core.transformer import TransformerConfig

        return TransformerConfig(**self.config_kwargs(size, rt))

    def layer_spec(self, config: "TransformerConfig", rt: Runtime) -> "ModuleSpec":
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_local_spec,
            get_gpt_layer_with_transformer_engine_spec,
        )

        if rt.use_te:
            return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
        return with_sdpa_attention(get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm,
                                                            normalization="RMSNorm"))

    def rope_kwargs(self, size: ModelSize) -> dict[str, Any]:
        return dict(position_embedding_type="rope", rotary_base=int(size.rope_theta), rotary_percent=1.0)

    def build(
        self,
        size: ModelSize,
        rt: Runtime,
        *,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: int | None = None,
        config: "TransformerConfig | None" = None,
    ) -> "GPTModel":
        from megatron.core.models.gpt import GPTModel

        config = config or self.transformer_config(size, rt)
        model = GPTModel(
            config=config,
            transformer_layer_spec=self.decoder_spec(config, rt, vp_stage),
            vocab_size=padded_vocab_size(size.vocab_size),
            max_sequence_length=max(rt.seq_length, 1),
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=size.tie_embeddings,
            vp_stage=vp_stage,
            **self.rope_kwargs(size),
        )
        self.finish_model(model, config)
        return model

    def decoder_spec(self, config: "TransformerConfig", rt: Runtime, vp_stage: int | None) -> Any:
        """What GPTModel builds its decoder from: one layer spec here; families with mixed
        layers (dense + MoE) return a block spec for this pipeline stage."""
        return self.layer_spec(config, rt)

    def finish_model(self, model: "GPTModel", config: "TransformerConfig") -> None:
        """Family-specific touches after GPTModel is built (none for dense models)."""

    # ---- HF side --------------------------------------------------------------------
    def hf_config(self, size: ModelSize) -> Any:
        """The transformers config with this size's values (the conversion oracle's shape)."""
        raise NotImplementedError

    def weight_mapping(self) -> "WeightMapping":
        raise NotImplementedError


def recompute_kwargs(rt: Runtime) -> dict[str, Any]:
    """Activation checkpointing in megatron-core terms for the seeds' AC switch."""
    if rt.recompute == "sel":
        return dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    if rt.recompute == "full":
        return dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=rt.recompute_layers)
    if rt.recompute == "offload" and rt.use_te:  # without TE: pai_patch.training.offload
        return dict(cpu_offloading=True, cpu_offloading_num_layers=rt.recompute_layers,
                    cpu_offloading_activations=True, cpu_offloading_weights=False)
    return {}


def padded_vocab_size(vocab_size: int, divisible_by: int = 128) -> int:
    """Megatron pads the embedding table; the published vocabularies are already multiples of 128.

    Padding is independent of TP (TP must divide the padded size, checked by the layout
    validator), so a checkpoint converted at one TP loads at another.
    """
    return -(-vocab_size // divisible_by) * divisible_by


def with_sdpa_attention(spec: "ModuleSpec") -> "ModuleSpec":
    """Swap the local spec's core attention for :class:`SDPACoreAttention` (MLA dims, packing)."""
    from pai_patch.models.attention import SDPACoreAttention

    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
