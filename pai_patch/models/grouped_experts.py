"""Routed experts as one grouped matmul per projection where Transformer Engine is absent.

megatron-core's local spec runs the routed experts one after another (``SequentialMLP``, with a
host sync on ``tokens_per_expert.tolist()``): 64 small GEMMs per projection for DeepSeek-V2-Lite,
because its ``GroupedMLP`` needs the ``grouped_gemm`` package and ``TEGroupedMLP`` needs TE.
:class:`GroupedSequentialMLP` keeps ``SequentialMLP``'s parameters, state dict and sharded
(torch_dist) checkpoint layout, and only replaces the forward: fc1 and fc2 each become one
``torch._grouped_mm`` over every local expert, with ``MLP.forward``'s activation and
per-token scaling in between.

The experts' weights are stacked for each matmul and the stack is dropped right after
(:class:`GroupedLinear` re-stacks in backward): keeping it for backward would hold a second copy of
every expert weight per MoE layer (1.1 GB per layer for V2-Lite in bf16).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_swiglu import weighted_bias_swiglu_impl
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.transformer_config import TransformerConfig

log = logging.getLogger(__name__)
_logged: set[str] = set()


class GroupedLinear(torch.autograd.Function):
    """``y[rows of expert e] = x[rows of expert e] @ weights[e].T`` for all experts in one call.

    ``offs`` holds the end row of each expert's tokens (int32, on the device). Backward returns one
    gradient per expert weight, so autograd's per-parameter hooks (megatron DDP's grad
    accumulation into ``main_grad``) fire exactly as for separate ``Linear`` layers.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, offs: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, offs, *weights)
        return torch._grouped_mm(x, torch.stack(weights).transpose(1, 2), offs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        x, offs, *weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = torch._grouped_mm(grad_out, torch.stack(weights), offs) if ctx.needs_input_grad[0] else None
        grad_weights: tuple[torch.Tensor | None, ...] = (None,) * len(weights)
        if any(ctx.needs_input_grad[2:]):
            # a 2D x 2D grouped matmul groups along K (the tokens): one [out, in] block per expert,
            # zeros for an expert that got no tokens; CUDA's kernel rejects K = 0 (no tokens at all,
            # which an EP rank can get), pytorch/pytorch#192497
            grad_weights = (torch._grouped_mm(grad_out.t(), x, offs) if x.shape[0] else
                            x.new_zeros(len(weights), grad_out.shape[1], x.shape[1])).unbind(0)
        return grad_x, None, *grad_weights


class GroupedSequentialMLP(SequentialMLP):
    """``SequentialMLP`` whose forward runs two grouped matmuls instead of a loop over experts.

    Where the grouped matmul cannot run (see :func:`why_not_grouped`) it falls back to
    ``SequentialMLP.forward``; the choice is made at the first forward (it depends on the
    activations' dtype and device), once per module, and logged once per process.
    """

    _fallback: str | None = None
    _decided = False

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor) -> tuple[torch.Tensor, None]:
        hidden, probs = permuted_local_hidden_states, permuted_probs
        if not self._decided:
            self._fallback, self._decided = why_not_grouped(self, hidden), True
            log_once(f"MoE experts: SequentialMLP loop ({self._fallback})" if self._fallback
                     else f"MoE experts: grouped GEMM (torch._grouped_mm, {hidden.dtype} on {hidden.device.type})")
        if self._fallback:
            return super().forward(hidden, tokens_per_expert, probs)
        if self.config.moe_apply_probs_on_input:  # as SequentialMLP.forward
            assert self.config.moe_router_topk == 1, "`moe_apply_probs_on_input` only works with `moe_router_topk`=1."
            hidden = (probs.unsqueeze(-1) * hidden).to(hidden.dtype)
            probs = torch.ones_like(probs)
        offs = group_ends(tokens_per_expert, hidden.device)
        fc1 = GroupedLinear.apply(hidden.contiguous(), offs, *(e.linear_fc1.weight for e in self.local_experts))
        act = expert_activation(self.config, fc1, probs)
        return GroupedLinear.apply(act, offs, *(e.linear_fc2.weight for e in self.local_experts)), None


def group_ends(tokens_per_expert: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The end row of each expert's tokens, int32 on ``device``, without waiting for the GPU.

    megatron's alltoall dispatcher hands the counts over on the host: they are summed there and
    copied from pinned memory (a copy from pageable memory may wait for the stream); counts
    on the device are summed on the device.
    """
    ends = torch.cumsum(tokens_per_expert, 0, dtype=torch.int32)
    if ends.device == device:
        return ends
    return (ends.pin_memory() if device.type == "cuda" else ends).to(device, non_blocking=True)


def expert_activation(config: TransformerConfig, fc1: torch.Tensor, per_token_scale: torch.Tensor) -> torch.Tensor:
    """``MLP.forward``'s activation with ``per_token_scale``, for bias-free experts: megatron's fused
    weighted SwiGLU where ``bias_activation_fusion`` is on, else the GLU (or plain activation)
    followed by the scale, cast back to the activation's dtype."""
    if config.bias_activation_fusion:  # why_not_grouped lets only SwiGLU through here
        return weighted_bias_swiglu_impl(fc1, None, per_token_scale.unsqueeze(-1),
                                         config.activation_func_fp8_input_store)
    if config.gated_linear_unit:
        x_glu, x_linear = torch.chunk(fc1, 2, dim=-1)
        if (val := config.activation_func_clamp_value) is not None:
            x_glu = x_glu.clamp(min=None, max=val)
            x_linear = x_linear.clamp(min=-val, max=val)
        out = config.activation_func(x_glu) * (x_linear + config.glu_linear_offset)
    else:
        out = config.activation_func(fc1)
    return (out * per_token_scale.unsqueeze(-1)).to(out.dtype)


def why_not_grouped(experts: SequentialMLP, hidden: torch.Tensor) -> str | None:
    """None where the grouped forward computes what ``SequentialMLP.forward`` does, else why not."""
    config = experts.config
    first = experts.local_experts[0]
    if experts.num_local_experts == 1:
        return "one local expert is already one GEMM"
    if config.add_bias_linear:
        return "experts have biases, which torch._grouped_mm does not take"
    if config.fp8 or config.fp4:
        return "fp8/fp4 experts need Transformer Engine's quantised GEMMs"
    if config.use_te_activation_func or getattr(config, "delay_wgrad_compute", False):
        return "Transformer Engine's activation or delayed weight gradients"
    if type(first.linear_fc1) is not ColumnParallelLinear or type(first.linear_fc2) is not RowParallelLinear:
        return f"expert linears are {type(first.linear_fc1).__name__}/{type(first.linear_fc2).__name__}"
    if config.bias_activation_fusion and not (config.gated_linear_unit and config.activation_func is F.silu):
        return "a fused activation other than SwiGLU"
    weights = [first.linear_fc1.weight, first.linear_fc2.weight]
    if any(w.dtype != hidden.dtype or w.device != hidden.device for w in weights):
        return f"activations ({hidden.dtype}, {hidden.device}) differ from the expert weights"
    if hidden.device.type == "cuda":
        # torch's CUTLASS kernel runs bf16 on sm90 only for us: other dtypes and GPUs take a loop
        # that copies the offsets to the host, and sm100's kernel gives empty experts nonzero
        # weight gradients (pytorch/pytorch#172439)
        if hidden.dtype != torch.bfloat16 or torch.cuda.get_device_capability(hidden.device)[0] != 9:
            return f"torch._grouped_mm's fast kernel needs bf16 on sm90 ({hidden.dtype} on " \
                   f"sm{''.join(map(str, torch.cuda.get_device_capability(hidden.device)))})"
    if not hasattr(torch, "_grouped_mm"):  # older torch builds (NGC 25.03's 2.7) lack it
        return f"torch {torch.__version__} has no torch._grouped_mm"
    widths = {*hidden.shape[-1:], *first.linear_fc1.weight.shape, *first.linear_fc2.weight.shape}
    if any(w * hidden.element_size() % 16 for w in widths):
        return f"torch._grouped_mm needs rows of a multiple of 16 bytes; widths {sorted(widths)} in {hidden.dtype}"
    return grouped_mm_unsupported(hidden.device.type, hidden.dtype)


@functools.cache
def grouped_mm_unsupported(device_type: str, dtype: torch.dtype) -> str | None:
    """Whether this torch build runs ``_grouped_mm`` on this device and dtype (one tiny call)."""
    try:
        x = torch.ones(2, 8, device=device_type, dtype=dtype)
        torch._grouped_mm(x, torch.ones(2, 8, 8, device=device_type, dtype=dtype),
                          torch.tensor([1, 2], device=device_type, dtype=torch.int32))
    except (RuntimeError, NotImplementedError) as exc:
        return f"torch._grouped_mm rejects {dtype} on {device_type}: {str(exc).splitlines()[0]}"
    return None


def log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


__all__ = ["GroupedLinear", "GroupedSequentialMLP", "expert_activation", "group_ends", "why_not_grouped"]
