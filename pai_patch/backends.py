"""Which attention kernel and precision a run can use on this machine.

The seeds leave this to the user ("build FA3 by hand if you are on H800"); a recipe that
asks for something the machine lacks then fails deep inside Transformer Engine or, worse,
silently runs a slower kernel.  Here the decision is made once, up front, logged with its
reason, and shared by the trainer, ``doctor`` and ``bench/gpu.py`` so they cannot disagree.

Order for ``FL=true``: FlashAttention-3 (Hopper only, through TE's attention) > TE flash
(FA2 inside TE) > TE fused (cuDNN) > PyTorch SDPA.  ``FL=false`` skips the flash kernels.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import torch

from pai_patch.models.base import PRECISIONS, te_available

log = logging.getLogger(__name__)

#: our attention backends, each with the megatron-core AttnBackend that forces it (TE 2.x prefers
#: cuDNN fused attention over flash on sm90 when both are allowed, so flash must forbid fused)
ATTENTION_BACKENDS = {"fa3": "flash", "te-flash": "flash", "te-fused": "fused", "sdpa": "auto"}
HOPPER = (9, 0)
#: where FA3's Python interface lives: its own wheel, or the seeds' hand-made `flashattn_hopper` folder
FA3_MODULES = ("flash_attn_interface", "flash_attn_3.flash_attn_interface", "flashattn_hopper.flash_attn_interface")


@dataclass(frozen=True)
class BackendChoice:
    """The attention path a run takes, and why (printed by ``doctor``, logged by training)."""

    use_te: bool
    attention: str
    reason: str

    @property
    def attn_backend(self) -> str:
        """The ``TransformerConfig.attention_backend`` (megatron-core ``AttnBackend`` name) that forces this choice.

        megatron-core turns it into TE's ``NVTE_*_ATTN`` switches when the model is built, and asserts
        they were not set otherwise, so the choice is expressed only here, never as environment
        variables.  FA3 runs inside TE's flash path; without TE nothing is pinned (``auto``).
        """
        return ATTENTION_BACKENDS[self.attention]


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of the current GPU, None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]


def importable(module: str) -> bool:
    """True if ``module`` imports; a broken CUDA build (missing symbol, wrong arch) counts as absent."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any failure means the kernel cannot be used
        return False
    return True


def fa3_available() -> bool:
    return any(importable(name) for name in FA3_MODULES)


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` naming what is missing when ``precision`` cannot run here."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision PR={precision!r}; valid: {', '.join(PRECISIONS)}")
    cap = cuda_capability()
    if precision == "fp8":
        where = "no CUDA GPU" if cap is None else f"a GPU with capability sm_{cap[0]}{cap[1]}"
        # Ada (sm_89) has fp8 GEMMs too, but the image builds TE for sm_80 and sm_90 only
        # (docker/Dockerfile's TORCH_CUDA_ARCH_LIST): its fp8 kernels would fail there at run time
        if cap is None or cap < HOPPER:
            raise ValueError(f"PR=fp8 needs a Hopper (sm_90) GPU with Transformer Engine (the image builds TE for "
                             f"sm_80 and sm_90 only); this machine has {where}. Use PR=bf16.")
        if not te_available():
            raise ValueError(f"PR=fp8 needs Transformer Engine, which does not import here ({where}); "
                             "use the pai-patch image (docker/README.md) or PR=bf16.")
    if precision == "bf16" and cap is not None and cap < (8, 0):
        raise ValueError(f"PR=bf16 needs an Ampere (sm_80) or newer GPU; this one is sm_{cap[0]}{cap[1]}. Use PR=fp16.")


def resolve_backend(flash_attn: bool, precision: str, *, equal_head_dims: bool = True) -> BackendChoice:
    """Pick the attention backend for the recipe switches ``FL`` and ``PR`` and log the choice."""
    check_precision(precision)
    choice = choose_backend(flash_attn, equal_head_dims=equal_head_dims)
    log.info("attention backend: %s (FL=%s, PR=%s): %s; the model config forces attention_backend=%s",
             choice.attention, str(flash_attn).lower(), precision, choice.reason, choice.attn_backend)
    return choice


def choose_backend(flash_attn: bool, *, equal_head_dims: bool = True) -> BackendChoice:
    """The backend ``FL=flash_attn`` gets on this machine, without the precision check or the log line.

    ``equal_head_dims=False`` (MLA: q/k heads wider than v heads): TE disables its flash-attn 2
    path for such heads, so where FA2 would have been picked (A100/A800, Hopper without FA3) the
    choice is TE's fused attention, which would otherwise be reported as te-flash and not run.
    """
    cap = cuda_capability()
    if cap is None:
        return BackendChoice(False, "sdpa", "no CUDA GPU: PyTorch scaled_dot_product_attention")
    te = te_available()
    sm = f"sm_{cap[0]}{cap[1]}"
    fa3 = flash_attn and cap == HOPPER and fa3_available()
    if fa3 and te:
        return BackendChoice(True, "fa3", f"FL=true on {sm} and flash_attn_interface imports")
    skipped = "" if not flash_attn else (
        f"; FA3 skipped: {sm} is not Hopper" if cap != HOPPER else
        "; FA3 skipped: it runs inside Transformer Engine, which does not import" if fa3 else
        "; FA3 skipped: flash_attn_interface does not import")
    fa2 = te and flash_attn and cap >= (8, 0) and importable("flash_attn")
    if fa2 and equal_head_dims:
        return BackendChoice(True, "te-flash", f"TE with flash-attn 2 on {sm}{skipped}")
    if te:
        why = ("FL=false" if not flash_attn else
               "TE's flash-attn 2 needs equal q/k and v head dims (MLA)" if fa2 else "flash-attn 2 unavailable")
        return BackendChoice(True, "te-fused", f"TE fused (cuDNN) attention on {sm}, {why}{skipped}")
    return BackendChoice(False, "sdpa", f"Transformer Engine does not import: PyTorch SDPA on {sm}{skipped}")


def require_fa3() -> None:
    """Raise ``ValueError`` unless FlashAttention-3 can run here (a recipe with ``FA3=true``)."""
    cap = cuda_capability()
    if cap != HOPPER:
        where = "no CUDA GPU" if cap is None else f"sm_{cap[0]}{cap[1]}"
        raise ValueError(f"FA3=true needs a Hopper GPU (sm_90: H100/H800/H20/H200); this machine has {where}. "
                         "Use FL=true, which falls back to flash-attn 2 or TE fused attention.")
    if not fa3_available():
        raise ValueError("FA3=true but flash_attn_interface does not import; use the pai-patch image, "
                         "which builds it from flash-attention/hopper (docker/README.md)")
