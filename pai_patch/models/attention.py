"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

Used by the local (no Transformer Engine) layer spec of every family.  Unlike
megatron-core's ``DotProductAttention`` it accepts key and value heads of different
widths (Multi-head Latent Attention: K = nope+rope dims, V = v_head_dim) and packed
sequences (``PackedSeqParams.cu_seqlens_q``), where attention stays inside each sample.

It also does context parallelism (CP) without Transformer Engine, the way TE's
``cp_comm_type="all_gather"`` does: each CP rank keeps its own queries and all-gathers
keys and values.  Megatron's load-balanced layout cuts the sequence into 2*CP chunks and
gives rank r chunks r and 2*CP-1-r, so the gathered chunks are put back into sequence
order and the causal mask compares the local queries' global positions with every key's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
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


def cp_positions(local_len: int, cp_size: int, cp_rank: int, device: torch.device | None = None) -> torch.Tensor:
    """Global sequence positions of the ``local_len`` tokens CP rank ``cp_rank`` holds.

    The rank holds chunks ``cp_rank`` and ``2*cp_size-1-cp_rank`` of the 2*CP equal chunks
    (``megatron.core.utils.get_batch_on_this_cp_rank``), in that order.
    """
    if local_len % 2:
        raise ValueError(f"context parallelism: the local sequence ({local_len} tokens) must hold two equal chunks")
    chunk = local_len // 2
    offsets = torch.arange(chunk, device=device)
    return torch.cat([cp_rank * chunk + offsets, (2 * cp_size - 1 - cp_rank) * chunk + offsets])


def cp_to_sequence_order(gathered: torch.Tensor, cp_size: int) -> torch.Tensor:
    """Reorder CP-gathered ranks' sequences (rank 0's tokens, rank 1's, ...; dim 0) into global order."""
    local_len = gathered.shape[0] // cp_size
    positions = torch.cat([cp_positions(local_len, cp_size, r, gathered.device) for r in range(cp_size)])
    return gathered.index_select(0, torch.argsort(positions))


def gather_over_cp(local: torch.Tensor, cp_group: torch.distributed.ProcessGroup) -> torch.Tensor:
    """All CP ranks' keys (or values) in sequence order; the backward reduce-scatters the
    gradient so that each key gets the contributions of every rank's queries."""
    gathered = gather_from_sequence_parallel_region(local, tensor_parallel_output_grad=True, group=cp_group)
    return cp_to_sequence_order(gathered, cp_group.size())


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
        self.cp_group = None
        if config.context_parallel_size > 1:
            cp_group = getattr(pg_collection, "cp", None)
            self.cp_group = cp_group if cp_group is not None else parallel_state.get_context_parallel_group()
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
        query_positions = None
        if self.cp_group is not None:
            key, value = gather_over_cp(key, self.cp_group), gather_over_cp(value, self.cp_group)
            query_positions = cp_positions(query.shape[0], self.cp_group.size(), self.cp_group.rank(), query.device)
        causal = (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal
        return attend(query, key, value, causal=causal, attention_mask=attention_mask,
                      cu_seqlens=packed_seq_params.cu_seqlens_q if packed_seq_params is not None else None,
                      query_positions=query_positions, dropout=self.dropout if self.training else 0.0,
                      scale=self.softmax_scale)


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, causal: bool,
           attention_mask: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
           query_positions: Optional[torch.Tensor] = None, dropout: float = 0.0,
           scale: Optional[float] = None) -> torch.Tensor:
    """Attention of sbhd ``query`` [sq, b, h, dk] over ``key`` [sk, b, hkv, dk] and ``value`` [sk, b, hkv, dv].

    ``query_positions`` (CP) are the queries' positions in the key sequence; without them
    the queries are the whole sequence.  A dense ``attention_mask`` (non-causal layers) must
    then already hold this rank's rows over all keys, as ``get_batch_on_this_cp_rank`` cuts
    it.  Returns [sq, b, h*dv].
    """
    # [s, b, h, d] -> [b, h, s, d]
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
    mask = None
    if cu_seqlens is not None:
        mask = packed_causal_mask(cu_seqlens, k.shape[2])
        if query_positions is not None:
            mask = mask[query_positions]
        causal = False
    elif causal and query_positions is not None:
        mask = torch.arange(k.shape[2], device=k.device).unsqueeze(0) <= query_positions.unsqueeze(1)
        causal = False
    elif attention_mask is not None and not causal:
        mask = ~attention_mask  # megatron masks are True where attention is *blocked*
    grouped = k.shape[1] != q.shape[1]
    if grouped and mask is not None:
        # SDPA's own GQA runs in the flash kernel only, which takes no mask: share the KV heads by copying
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        grouped = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale,
                                         enable_gqa=grouped)
    # [b, h, s, dv] -> [s, b, h*dv]
    b, h, s, dv = out.shape
    return out.permute(2, 0, 1, 3).reshape(s, b, h * dv)
