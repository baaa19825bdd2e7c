"""DeepSeek-V2 size rows: the dense-model fields plus MLA, DeepSeekMoE and YaRN.

Values come from the published ``config.json`` of deepseek-ai/DeepSeek-V2-Lite (``A2.4B``)
and deepseek-ai/DeepSeek-V2 (``A21B``); :func:`size_from_hf_config` reads the same
fields back so that any checkpoint of the family converts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pai_patch.models.base import ModelSize


@dataclass(frozen=True)
class DeepseekV2Size(ModelSize):
    #: None: a full-rank query projection (V2-Lite); else the query's low-rank width
    q_lora_rank: int | None = None
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    num_experts: int = 64
    moe_topk: int = 6
    moe_ffn_hidden_size: int = 1408
    num_shared_experts: int = 2
    #: the first layers keep a dense MLP of ``ffn_hidden_size`` (``first_k_dense_replace``)
    first_k_dense: int = 1
    routed_scaling_factor: float = 1.0
    #: group-limited ("device-limited") routing: experts in ``num_groups`` groups, a token
    #: picks experts only inside its ``group_topk`` best groups; None for plain top-k
    num_groups: int | None = None
    group_topk: int | None = None
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True
    rope_factor: float = 40.0
    mscale: float = 0.707
    mscale_all_dim: float = 0.707
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def default_head_dim(self) -> int:
        return self.qk_nope_head_dim  # MLA: the non-rotary part of a query/key head

    @property
    def attention_head_dims(self) -> tuple[int, int]:
        return self.qk_nope_head_dim + self.qk_rope_head_dim, self.v_head_dim

    def yarn_hf(self) -> dict[str, Any]:
        """The YaRN block of ``rope_parameters`` in transformers' spelling."""
        return {"factor": self.rope_factor, "mscale": self.mscale, "mscale_all_dim": self.mscale_all_dim,
                "original_max_position_embeddings": self.original_max_position_embeddings,
                "beta_fast": self.beta_fast, "beta_slow": self.beta_slow}


_PUBLISHED = dict(vocab_size=102400, max_position_embeddings=163840, rope_theta=10000.0, norm_eps=1e-6,
                  tie_embeddings=False, qkv_bias=False)

SIZES: dict[str, DeepseekV2Size] = {
    # DeepSeek-V2-Lite's shape at toy width: full-rank Q, MLA with YaRN, shared + routed
    # experts, a dense first layer (the A21B extras, low-rank Q and group routing, are
    # exercised by the parity tests on a variant of this row).
    "tiny": DeepseekV2Size(
        name="tiny", hidden_size=128, num_layers=4, num_attention_heads=4, num_query_groups=4,
        ffn_hidden_size=384, vocab_size=2048, max_position_embeddings=4096, rope_theta=10000.0, norm_eps=1e-6,
        tie_embeddings=False, qkv_bias=False, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, num_experts=8, moe_topk=2, moe_ffn_hidden_size=64,
        num_shared_experts=2, first_k_dense=1, routed_scaling_factor=1.0,
    ),
    "A2.4B": DeepseekV2Size(
        name="A2.4B", hidden_size=2048, num_layers=27, num_attention_heads=16, num_query_groups=16,
        ffn_hidden_size=10944, **_PUBLISHED, q_lora_rank=None, kv_lora_rank=512, num_experts=64, moe_topk=6,
        moe_ffn_hidden_size=1408, num_shared_experts=2, first_k_dense=1, routed_scaling_factor=1.0,
        published_params=15_706_484_224, published_active=2_400_000_000, hf_repo="deepseek-ai/DeepSeek-V2-Lite",
    ),
    "A21B": DeepseekV2Size(
        name="A21B", hidden_size=5120, num_layers=60, num_attention_heads=128, num_query_groups=128,
        ffn_hidden_size=12288, **_PUBLISHED, q_lora_rank=1536, kv_lora_rank=512, num_experts=160, moe_topk=6,
        moe_ffn_hidden_size=1536, num_shared_experts=2, first_k_dense=1, routed_scaling_factor=16.0,
        num_groups=8, group_topk=3,
        published_params=235_741_434_880, published_active=21_000_000_000, hf_repo="deepseek-ai/DeepSeek-V2",
    ),
}


def size_from_hf_config(hf: Mapping[str, Any], name: str = "custom") -> DeepseekV2Size:
    """A size row from a DeepSeek-V2 ``config.json`` (remote-code ``rope_scaling`` or ``rope_parameters``)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type") or rope.get("type")
    if rope_type != "yarn":
        raise ValueError(f"config.json: DeepSeek-V2 expects YaRN rope scaling (rope_type 'yarn'), got {rope_type!r}")
    grouped = hf.get("topk_method") == "group_limited_greedy"
    heads = hf["num_attention_heads"]
    return DeepseekV2Size(
        name=name, hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"], num_attention_heads=heads,
        num_query_groups=heads, ffn_hidden_size=hf["intermediate_size"], vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 163840),
        rope_theta=float(hf.get("rope_theta") or rope.get("rope_theta", 10000.0)),
        norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bool(hf.get("attention_bias", False)),
        q_lora_rank=hf.get("q_lora_rank"), kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"], num_experts=hf["n_routed_experts"], moe_topk=hf["num_experts_per_tok"],
        moe_ffn_hidden_size=hf["moe_intermediate_size"], num_shared_experts=hf["n_shared_experts"],
        first_k_dense=hf.get("first_k_dense_replace", 0),
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        num_groups=hf.get("n_group") if grouped else None, group_topk=hf.get("topk_group") if grouped else None,
        aux_loss_alpha=float(hf.get("aux_loss_alpha", 0.001)), seq_aux=bool(hf.get("seq_aux", True)),
        rope_factor=float(rope["factor"]), mscale=float(rope.get("mscale", 1.0)),
        mscale_all_dim=float(rope.get("mscale_all_dim", 0.0)),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        beta_fast=float(rope.get("beta_fast", 32)), beta_slow=float(rope.get("beta_slow", 1)),
    )
