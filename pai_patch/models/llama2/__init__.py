"""Llama 2 (7B, 13B, 70B), values from the published ``meta-llama/Llama-2-*-hf`` config.json."""

from __future__ import annotations

from pai_patch.models import register
from pai_patch.models.base import ModelSize
from pai_patch.models.dense import DenseFamily


def _row(name: str, hidden: int, layers: int, heads: int, groups: int, ffn: int, vocab: int,
         published: int | None) -> ModelSize:
    return ModelSize(
        name=name, hidden_size=hidden, num_layers=layers, num_attention_heads=heads, num_query_groups=groups,
        ffn_hidden_size=ffn, vocab_size=vocab, max_position_embeddings=4096, rope_theta=10000.0, norm_eps=1e-5,
        tie_embeddings=False, qkv_bias=False, published_params=published,
        hf_repo=None if published is None else f"meta-llama/Llama-2-{name.lower()}-hf",
    )


SIZES = {
    "tiny": _row("tiny", 128, 4, 4, 4, 352, 2048, None),
    "7B": _row("7B", 4096, 32, 32, 32, 11008, 32000, 6_738_415_616),
    "13B": _row("13B", 5120, 40, 40, 40, 13824, 32000, 13_015_864_320),
    "70B": _row("70B", 8192, 80, 64, 8, 28672, 32000, 68_976_648_192),
}


@register
class Llama2(DenseFamily):
    name = "llama2"
    sizes = SIZES
    hf_architecture = "LlamaForCausalLM"
    hf_model_type = "llama"
    hf_config_class = "LlamaConfig"
    tokenizer_aliases = ("LLamaTokenizer", "LlamaTokenizer", "LLama2Tokenizer")
