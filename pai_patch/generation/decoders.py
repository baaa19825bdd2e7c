"""Forward passes with a KV cache, one prompt at a time: HF models and Megatron-Core ``GPTModel``.

Both expose ``start(prompt_ids)`` (prefill, returns the last position's logits) and
``step(token)`` (one decode step), over the real vocabulary only (Megatron pads its
embedding table; padded rows must never be sampled).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Decoder(Protocol):
    context_length: int

    def start(self, prompt_ids: list[int], max_length: int) -> torch.Tensor: ...

    def step(self, token: int) -> torch.Tensor: ...


class HFDecoder:
    """A transformers causal LM with its ``DynamicCache``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.context_length = model.config.max_position_embeddings  # prompt + output tokens the model is made for
        self.device = next(model.parameters()).device
        self.cache = None
        self.length = 0

    @torch.no_grad()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=input_ids, cache=self.cache, use_cache=True)
        self.length += len(ids)
        return out.logits[0, -1, : self.vocab_size].float().cpu()

    def start(self, prompt_ids: list[int], max_length: int) -> torch.Tensor:
        self.cache, self.length = None, 0
        return self._forward(prompt_ids)

    def step(self, token: int) -> torch.Tensor:
        return self._forward([token])


class McoreDecoder:
    """A megatron-core ``GPTModel`` with its static KV cache (``StaticInferenceContext``).

    Under tensor parallelism every rank runs the same steps; logits are gathered over TP
    (``runtime_gather_output``) so that each rank sees the full vocabulary.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int) -> None:
        self.model = model.eval()
        self.vocab_size = vocab_size
        self.context_length = model.max_sequence_length
        self.device = next(model.parameters()).device
        self.context = None

    @torch.no_grad()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        offset = self.context.sequence_len_offset
        input_ids = torch.tensor([ids], device=self.device)
        positions = torch.arange(offset, offset + len(ids), device=self.device).unsqueeze(0)
        logits = self.model(input_ids, positions, None, inference_context=self.context, runtime_gather_output=True)
        self.context.sequence_len_offset += len(ids)
        return logits[0, -1, : self.vocab_size].float().cpu()

    def start(self, prompt_ids: list[int], max_length: int) -> torch.Tensor:
        from megatron.core.inference.contexts import StaticInferenceContext

        self.context = StaticInferenceContext(max_batch_size=1, max_sequence_length=max_length)
        return self._forward(prompt_ids)

    def step(self, token: int) -> torch.Tensor:
        self.context.enable_decode_mode()
        return self._forward([token])
