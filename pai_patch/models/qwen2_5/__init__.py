"""Qwen2.5 dense models (0.5B ... 72B), values from each model's published config.json."""

from __future__ import annotations

from typing import Any, Mapping

from pai_patch.models import register
from pai_patch.models.base import ModelSize
from pai_patch.models.dense import DenseFamily


def _row(name: str, hidden: int, layers: int, heads: int, groups: int, ffn: int, vocab: int, tie: bool,
         eps: float, max_pos: int, published: int | None) -> ModelSize:
    return ModelSize(
        name=name, hidden_size=hidden, num_layers=layers, num_attention_heads=heads, num_query_groups=groups,
        ffn_hidden_size=ffn, vocab_size=vocab, max_position_embeddings=max_pos, rope_theta=1_000_000.0,
        norm_eps=eps, tie_embeddings=tie, qkv_bias=True, published_params=published,
        hf_repo=None if published is None else f"Qwen/Qwen2.5-{name}",
    )


SIZES = {
    "tiny": _row("tiny", 128, 4, 4, 2, 384, 2048, True, 1e-6, 4096, None),
    "0.5B": _row("0.5B", 896, 24, 14, 2, 4864, 151936, True, 1e-6, 32768, 494_032_768),
    "1.5B": _row("1.5B", 1536, 28, 12, 2, 8960, 151936, True, 1e-6, 32768, 1_543_714_304),
    "3B": _row("3B", 2048, 36, 16, 2, 11008, 151936, True, 1e-6, 32768, 3_085_938_688),
    "7B": _row("7B", 3584, 28, 28, 4, 18944, 152064, False, 1e-6, 131072, 7_615_616_512),
    "14B": _row("14B", 5120, 48, 40, 8, 13824, 152064, False, 1e-5, 131072, 14_770_033_664),
    "32B": _row("32B", 5120, 64, 40, 8, 27648, 152064, False, 1e-5, 131072, 32_763_876_352),
    "72B": _row("72B", 8192, 80, 64, 8, 29568, 152064, False, 1e-5, 131072, 72_706_203_648),
}


@register
class Qwen25(DenseFamily):
    name = "qwen2_5"
    sizes = SIZES
    hf_architecture = "Qwen2ForCausalLM"
    hf_model_type = "qwen2"
    hf_config_class = "Qwen2Config"
    tokenizer_aliases = ("Qwen2Tokenizer", "Qwen2.5Tokenizer")

    def _hf_qkv_bias(self, hf: Mapping[str, Any]) -> bool:
        return True  # Qwen2 always has q/k/v biases; its config has no switch for it

    def hf_extra_config(self, size: ModelSize) -> dict[str, Any]:
        return {"use_sliding_window": False, "max_window_layers": size.num_layers}
