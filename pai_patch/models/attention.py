"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

Used by the local (no Transformer Engine) layer spec of every family.  Unlike
megatron-core's ``DotProductAttention`` it accepts key and value heads of different
widths (Multi-head Latent Attention: K = nope+rope dims, V = v_head_dim) and packed
sequences (``PackedSeqParams.cu_seqlens_q``), where attention stays inside each sample.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


def packed_causal_mask(cu_seqlens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Boolean [s, s] mask, True where attention is allowed: causal and within one sample.

    ``cu_seqlens`` holds sample start offsets ending with the used length; positions past
    it (padding) form one trailing segment so that every row attends to something.
    """
    starts = cu_seqlens.to(torch.long)
    positions = torch.arange(seq_len, device=cu_seqlens.device)
    segment = torch.bucketize(positions, starts[1:], right=True)
    same = segment.unsqueeze(0) == segment.unsqueeze(1)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=cu_seqlens.device).tril()
    return same & causal


class SDPACoreAttention(MegatronModule):
    """Drop-in ``core_attention`` for megatron-core's attention modules (sbhd layout)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        k_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,  # noqa: ANN001 - megatron passes its process-group collection
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ValueError("context parallelism needs Transformer Engine attention (not available here)")
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        head_dim = k_channels or config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else head_dim**-0.5

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if k.shape[1] != q.shape[1]:  # grouped-query attention
            repeat = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        mask = None
        causal = (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal
        if packed_seq_params is not None:
            mask = packed_causal_mask(packed_seq_params.cu_seqlens_q, q.shape[2])
            causal = False
        elif attention_mask is not None and not causal:
            mask = ~attention_mask  # megatron masks are True where attention is *blocked*
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None, scale=self.softmax_scale
        )
        # [b, h, s, dv] -> [s, b, h*dv]
        b, h, s, dv = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, h * dv)
