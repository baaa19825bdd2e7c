"""Qwen3 dense models (0.6B ... 32B), values from each model's published config.json.

Against Qwen2.5: no q/k/v biases, an RMSNorm over every query and key head before RoPE
(``q_norm``/``k_norm``), and a head width of its own (128 at every size, so 0.6B has
16 x 128 query columns on a hidden size of 1024).
"""

from __future__ import annotations

from typing import Any, Mapping

from pai_patch.models import register
from pai_patch.models.base import ModelSize
from pai_patch.models.dense import DenseFamily


def _row(name: str, hidden: int, layers: int, heads: int, groups: int, ffn: int, tie: bool,
         published: int | None, *, head_dim: int = 128, vocab: int = 151936, max_pos: int = 40960) -> ModelSize:
    return ModelSize(
        name=name, hidden_size=hidden, num_layers=layers, num_attention_heads=heads, num_query_groups=groups,
        ffn_hidden_size=ffn, vocab_size=vocab, max_position_embeddings=max_pos, rope_theta=1_000_000.0,
        norm_eps=1e-6, tie_embeddings=tie, qkv_bias=False, published_params=published,
        hf_repo=None if published is None else f"Qwen/Qwen3-{name}", head_dim=head_dim, qk_layernorm=True,
    )


# published_params: the safetensors index totals (bytes / 2, bf16).  The tied 0.6B and 1.7B checkpoints also store
# lm_head.weight, a copy of the embedding (151936 x hidden): their hub totals, 751_632_384 and 2_031_739_904,
# count it twice, and the rows hold those totals less the copy (what transformers' num_parameters() reports).
SIZES = {
    # odd shape on purpose: head_dim 48 is not hidden / heads (32), as in every real Qwen3 size
    "tiny": _row("tiny", 128, 4, 4, 2, 384, True, None, head_dim=48, vocab=2048, max_pos=4096),
    "0.6B": _row("0.6B", 1024, 28, 16, 8, 3072, True, 596_049_920),
    "1.7B": _row("1.7B", 2048, 28, 16, 8, 6144, True, 1_720_574_976),
    "4B": _row("4B", 2560, 36, 32, 8, 9728, True, 4_022_468_096),
    "8B": _row("8B", 4096, 36, 32, 8, 12288, False, 8_190_735_360),
    "14B": _row("14B", 5120, 40, 40, 8, 17408, False, 14_768_307_200),
    "32B": _row("32B", 5120, 64, 64, 8, 25600, False, 32_762_123_264),
}


@register
class Qwen3(DenseFamily):
    name = "qwen3"
    sizes = SIZES
    hf_architecture = "Qwen3ForCausalLM"
    hf_model_type = "qwen3"
    hf_config_class = "Qwen3Config"
    tokenizer_aliases = ("Qwen2Tokenizer",)  # Qwen3 ships Qwen2.5's tokenizer class and vocabulary

    def _hf_qk_layernorm(self, hf: Mapping[str, Any]) -> bool:
        return True  # every Qwen3 layer has q_norm/k_norm; its config has no switch for it

    def hf_extra_config(self, size: ModelSize) -> dict[str, Any]:
        return {"head_dim": size.head_dim, "attention_bias": size.qkv_bias, "use_sliding_window": False,
                "max_window_layers": size.num_layers}
