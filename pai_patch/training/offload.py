"""Activation offload (seeds' ``AC=offload``) where megatron-core's own needs Transformer Engine.

megatron-core's ``cpu_offloading`` asserts TE is present.  Without TE we wrap the first
``MP_AC_LAYERS`` decoder layers in ``torch.autograd.graph.save_on_cpu``: tensors those layers
save for backward live in (pinned) host memory and come back to the device for backward.
The computation is unchanged, so the loss is identical; only device memory moves.
"""

from __future__ import annotations

import torch


def install_activation_offload(model_chunks: list[torch.nn.Module], num_layers: int) -> int:
    """Wrap the first ``num_layers`` decoder layers (across chunks); returns how many were wrapped."""
    pin = torch.cuda.is_available()
    wrapped = 0
    for chunk in model_chunks:
        decoder = getattr(getattr(chunk, "module", chunk), "decoder", None)
        for layer in getattr(decoder, "layers", []):
            if wrapped >= num_layers:
                return wrapped
            contexts: list[torch.autograd.graph.save_on_cpu] = []

            def enter(module, args, contexts=contexts):  # noqa: ANN001, ANN202
                ctx = torch.autograd.graph.save_on_cpu(pin_memory=pin)
                ctx.__enter__()
                contexts.append(ctx)

            def leave(module, args, output, contexts=contexts):  # noqa: ANN001, ANN202
                contexts.pop().__exit__(None, None, None)

            layer.register_forward_pre_hook(enter)
            layer.register_forward_hook(leave)
            wrapped += 1
    return wrapped
