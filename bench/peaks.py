"""Datasheet dense peaks by GPU and precision: the denominator of MFU.

Megatron-LM, PaLM and torchtitan divide achieved model FLOP/s by the vendor's dense (no
sparsity) tensor-core peak, so an MFU means the same in every report.  A matmul peak measured
on the device (``bench/gpu.py`` prints one) is lower, about 780 of H200's 989 TFLOP/s in bf16:
it is what a kernel can reach there, printed beside MFU as "achievable", never divided into it.
"""

from __future__ import annotations

import re

#: (pattern on torch.cuda.get_device_name(), dense TFLOP/s by precision), first match wins;
#: fp16 runs at the bf16 rate on these parts, and a precision missing from a row has no peak there
DATASHEET_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H100.*PCIe", {"bf16": 756.0, "fp16": 756.0, "fp8": 1513.0}),
    (r"H100|H200|H800", {"bf16": 989.0, "fp16": 989.0, "fp8": 1979.0}),
    (r"\bH20\b", {"bf16": 148.0, "fp16": 148.0, "fp8": 296.0}),
    (r"A100|A800", {"bf16": 312.0, "fp16": 312.0}),
)


def datasheet_peak(device: str, precision: str = "bf16") -> float | None:
    """Dense TFLOP/s of ``device`` (a CUDA device name) at ``precision``; None where the table has none."""
    for pattern, peaks in DATASHEET_PEAKS:
        if re.search(pattern, device):
            return peaks.get(precision)
    return None


def mfu(tflops: float, device: str, precision: str = "bf16") -> float | None:
    """Model FLOPs utilisation: achieved TFLOP/s over the datasheet dense peak (None without one)."""
    peak = datasheet_peak(device, precision)
    return None if peak is None else tflops / peak
