"""The Llama-style dense decoder shared by Qwen2.5 and Llama2 (RMSNorm, RoPE, SwiGLU, GQA).

The two families differ only in their size tables, QKV bias and HF config class; the
Megatron-Core side and the HF weight layout are the same, so both subclass this.
"""

from __future__ import annotations

from typing import Any

from pai_patch.models.base import ModelFamily, ModelSize


class DenseFamily(ModelFamily):
    hf_config_class: str  # name in `transformers`

    def hf_config(self, size: ModelSize) -> Any:
        import transformers

        cls = getattr(transformers, self.hf_config_class)
        return cls(
            vocab_size=size.vocab_size,
            hidden_size=size.hidden_size,
            intermediate_size=size.ffn_hidden_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_attention_heads,
            num_key_value_heads=size.num_query_groups,
            max_position_embeddings=size.max_position_embeddings,
            rms_norm_eps=size.norm_eps,
            rope_theta=size.rope_theta,
            tie_word_embeddings=size.tie_embeddings,
            architectures=[self.hf_architecture],
            **self.hf_extra_config(size),
        )

    def hf_extra_config(self, size: ModelSize) -> dict[str, Any]:
        return {}

    def weight_mapping(self):  # noqa: ANN201 - see pai_patch.convert.mapping
        from pai_patch.models.dense_mapping import dense_mapping

        return dense_mapping()
