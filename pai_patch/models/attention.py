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

PyTorch's flash kernel wants one head dim for queries, keys and values, so MLA (q/k 192,
v 128) would fall to the slower memory-efficient kernel.  Where flash is otherwise eligible
(CUDA, bf16/fp16, no dense mask, v < q/k <= 256) the values are padded with zeros to the q/k
width and the output sliced back: exact, since the extra output columns are zero and the
real columns' gradients do not see them.  :func:`choose_sdpa_kernel` makes that choice once
per shape (probing the kernels), logs it, and names the kernel for ``bench/gpu.py``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

#: tests set this to take the padded-V path off CUDA (any device, dtype and mask)
FORCE_VALUE_PADDING = False
FLASH_MAX_HEAD_DIM = 256
#: the kernels PyTorch tries, in its default order (math, always able, before cuDNN)
SDPA_BACKENDS = (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION))


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
        if self.cp_group is not None:  # one all-gather and one reordering for keys and values together
            keys_values = gather_over_cp(torch.cat([key, value], dim=-1), self.cp_group)
            key, value = keys_values.split([key.shape[-1], value.shape[-1]], dim=-1)
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
    dv = v.shape[-1]
    kernel = choose_sdpa_kernel(q.shape[-1], dv, q.shape[1], k.shape[1], q.dtype, q.device, masked=mask is not None,
                                force_padding=FORCE_VALUE_PADDING)
    if kernel.value_dim != dv:
        v = F.pad(v, (0, kernel.value_dim - dv))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale,
                                         enable_gqa=grouped)[..., :dv]
    # [b, h, s, dv] -> [s, b, h*dv]
    b, h, s, _ = out.shape
    return out.permute(2, 0, 1, 3).reshape(s, b, h * dv)


@dataclass(frozen=True)
class SdpaKernel:
    """The SDPA kernel one attention shape runs on, the V head dim it is called with, and why."""

    name: str
    value_dim: int
    reason: str


@functools.lru_cache(maxsize=None)
def choose_sdpa_kernel(qk_dim: int, v_dim: int, heads: int, kv_heads: int, dtype: torch.dtype,
                       device: torch.device, *, masked: bool, force_padding: bool = False) -> SdpaKernel:
    """Pad V to the q/k head dim where that opens the flash kernel; decided and logged once per shape.

    ``masked``: the call passes a dense mask (packed sequences, context parallelism, a
    padding mask), which flash does not take.  ``force_padding`` pads wherever V is
    narrower, so that the padded path can be tested on CPU.
    """
    if v_dim == qk_dim:
        reason = "q, k and v heads of one width"
    elif v_dim > qk_dim or qk_dim > FLASH_MAX_HEAD_DIM:
        reason = f"flash takes head dims up to {FLASH_MAX_HEAD_DIM} and V no wider than q/k: q/k {qk_dim}, v {v_dim}"
    else:
        blocker = None if force_padding else _padding_blocker(dtype, device, masked)
        padded = None if blocker else _probe_kernel(qk_dim, qk_dim, heads, kv_heads, dtype, device, masked)
        if padded == "flash" or force_padding:
            reason = (f"flash needs one head dim for q, k and v: v ({v_dim}) padded with zeros to {qk_dim}, "
                      f"output sliced back{' (forced)' if force_padding else ''}")
            return _logged(SdpaKernel(f"{padded} (v padded)", qk_dim, reason), qk_dim, v_dim, dtype, device)
        reason = (f"v ({v_dim}) narrower than q/k ({qk_dim}) and not padded: "
                  f"{blocker or 'flash refused the padded shape on this device'}")
    kernel = _probe_kernel(qk_dim, v_dim, heads, kv_heads, dtype, device, masked)
    return _logged(SdpaKernel(kernel, v_dim, reason), qk_dim, v_dim, dtype, device)


def _logged(choice: SdpaKernel, qk_dim: int, v_dim: int, dtype: torch.dtype, device: torch.device) -> SdpaKernel:
    """``choice``, logged (once per shape: :func:`choose_sdpa_kernel` is cached)."""
    log.info("core attention: sdpa/%s for q/k head dim %d, v %d, %s on %s (%s)", choice.name, qk_dim, v_dim,
             str(dtype).removeprefix("torch."), device, choice.reason)
    return choice


def _padding_blocker(dtype: torch.dtype, device: torch.device, masked: bool) -> Optional[str]:
    """Why flash is out for this call whatever the V width (None: only the width stands in the way)."""
    if device.type != "cuda":
        return f"padding is for CUDA's flash kernel, not {device.type}"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"flash takes bf16/fp16, not {str(dtype).removeprefix('torch.')}"
    if masked:
        return "a dense mask (packed sequences, context parallelism or a padding mask) rules flash out"
    return None


def _probe_kernel(qk_dim: int, v_dim: int, heads: int, kv_heads: int, dtype: torch.dtype, device: torch.device,
                  masked: bool) -> str:
    """The first of PyTorch's kernels that runs a small causal (or masked) forward and backward of this shape."""
    seq = 128
    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each refused kernel warns why
        # constants: eligibility does not depend on values, and random ones would move the RNG
        q = torch.ones(1, heads, seq, qk_dim, device=device, dtype=dtype, requires_grad=True)
        k = torch.ones(1, kv_heads, seq, qk_dim, device=device, dtype=dtype)
        v = torch.ones(1, kv_heads, seq, v_dim, device=device, dtype=dtype)
        mask = torch.ones(seq, seq, dtype=torch.bool, device=device).tril() if masked else None
        for name, backend in SDPA_BACKENDS:
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not masked,
                                                   enable_gqa=kv_heads != heads).sum().backward()
                return name
            except RuntimeError:
                continue
    return "math"
