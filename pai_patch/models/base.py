"""What every model family provides: its size table, its Megatron-Core config and spec, its HF side.

A family is one folder under ``pai_patch/models``; it subclasses :class:`ModelFamily`
and registers itself with :func:`pai_patch.models.register`.  Everything else in the
project (training, conversion, generation, ``models info``) goes through this interface,
so adding a model means adding a folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # heavy imports stay out of module import time (`make help`, CLI parsing)
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.spec_utils import ModuleSpec

    from pai_patch.convert.mapping import WeightMapping

RECOMPUTE_MODES = ("false", "sel", "full", "offload")
#: ModelSize's integer shape fields -> the config.json keys they are read from
SHAPE_KEYS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
              "num_attention_heads": "num_attention_heads", "num_query_groups": "num_key_value_heads",
              "ffn_hidden_size": "intermediate_size", "vocab_size": "vocab_size",
              "max_position_embeddings": "max_position_embeddings"}
#: config.json keys read without a check of their own, and the JSON type each must have when set
TYPED_KEYS = {"rope_parameters": (dict, "a JSON object"), "rope_scaling": (dict, "a JSON object"),
              "tie_word_embeddings": (bool, "true or false"), "attention_bias": (bool, "true or false")}
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
#: the seeds' PR=fp8 (their launchers pass --bf16 --fp8-format hybrid --fp8-amax-compute-algo max
#: --fp8-amax-history-len 1024): bf16 weights and activations, fp8 GEMMs with delayed scaling.  Not
#: megatron's default recipe (amax history 1, most_recent), and not fp32 params, which would turn off
#: every fused attention kernel in Transformer Engine.
FP8_CONFIG = dict(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024, fp8_amax_compute_algo="max")


def read_hf_config(path: Path) -> dict[str, Any]:
    """An HF ``config.json`` as a mapping; ``ValueError`` naming the file (and line) when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected an HF config.json") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); expected an HF config.json") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON {type(data).__name__}, expected an object (an HF config.json)")
    return data


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
        heads = self.num_attention_heads
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:  # a config.json's value, unchecked
            raise ValueError(f"num_attention_heads = {heads!r}, expected a positive integer")
        return self.hidden_size // heads

    @property
    def attention_head_dims(self) -> tuple[int, int]:
        """(query/key, value) width of one attention head: unequal under MLA, which some kernels refuse."""
        return self.head_dim, self.head_dim

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
    #: megatron-core AttnBackend name the config forces (:attr:`pai_patch.backends.BackendChoice.attn_backend`)
    attention_backend: str = "auto"
    seq_length: int = 4096
    init_std: float = 0.02
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def params_dtype(self) -> torch.dtype:
        """Weights' dtype: fp8 keeps bf16 weights (TE casts to fp8 inside each GEMM)."""
        return {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)


def te_available() -> bool:
    """True when Transformer Engine's PyTorch extension imports on a CUDA machine.

    ``transformer_engine`` itself imports even when its compiled extension does not load (TE 2.x's
    top level swallows that ImportError), so the decision is made on ``transformer_engine.pytorch``.
    """
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install must not break the CPU path
        return False
    return True


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

    def size_from_config(self, path: Path, name: str = "custom") -> ModelSize:
        """``size_from_hf`` of the ``config.json`` at ``path``; ``ValueError`` naming the file and key when it cannot.

        A hand-edited or truncated config.json otherwise fails as a bare ``KeyError`` or a
        ``JSONDecodeError`` traceback, or with a shape error deep inside megatron-core.
        """
        hf = read_hf_config(path)
        for key, (kind, what) in TYPED_KEYS.items():
            if hf.get(key) is not None and not isinstance(hf[key], kind):
                raise ValueError(f"{path}: {key} = {hf[key]!r}, expected {what}")
        try:
            size = self.size_from_hf(hf, name)
        except KeyError as err:
            raise ValueError(f"{path}: no {err.args[0]!r} key, which the shape of a {self.name} model needs") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None
        for field_name, key in SHAPE_KEYS.items():
            value = getattr(size, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{path}: {key} = {value!r}, expected a positive integer")
        for field_name, key in (("rope_theta", "rope_theta"), ("norm_eps", "rms_norm_eps")):
            value = getattr(size, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{path}: {key} = {value!r}, expected a positive number")
        if size.hidden_size % size.num_attention_heads:
            raise ValueError(f"{path}: hidden_size ({size.hidden_size}) is not a multiple of num_attention_heads "
                             f"({size.num_attention_heads})")
        if size.num_attention_heads % size.num_query_groups:
            raise ValueError(f"{path}: num_attention_heads ({size.num_attention_heads}) is not a multiple of "
                             f"num_key_value_heads ({size.num_query_groups})")
        return size

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
        from megatron.core.transformer.enums import AttnBackend

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
            attention_backend=AttnBackend[rt.attention_backend],
            params_dtype=rt.params_dtype,
            bf16=rt.precision in ("bf16", "fp8"),
            fp16=rt.precision == "fp16",
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
        if rt.precision == "fp8":
            kwargs.update(FP8_CONFIG)
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
