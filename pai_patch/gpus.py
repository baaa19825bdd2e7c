"""Datasheet facts of the GPUs the recipes run on (PAI's H800/H20, and H100/H200/A100): one table.

``rehearse`` holds a job's memory against ``memory_gb``; ``bench/gpu.py`` divides achieved model
FLOP/s by ``peak_tflops``. Megatron-LM, PaLM and torchtitan divide by the vendor's dense (no
sparsity) tensor-core peak, so an MFU means the same in every report. A matmul peak measured on the
device (``bench/gpu.py`` prints one) is lower, about 780 of H200's 989 TFLOP/s in bf16: it is what a
kernel can reach there, printed beside MFU as "achievable", never divided into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping


def _peaks(bf16: float, fp8: float | None = None) -> dict[str, float]:
    """fp16 runs at the bf16 rate on these parts; a precision missing from a row has no peak there."""
    return {"bf16": bf16, "fp16": bf16} | ({"fp8": fp8} if fp8 else {})


@dataclass(frozen=True)
class Gpu:
    name: str
    #: HBM capacity, in GB (10^9 bytes) as the datasheet states it
    memory_gb: float
    #: dense TFLOP/s by precision
    peak_tflops: Mapping[str, float] = field(default_factory=dict)
    #: how ``torch.cuda.get_device_name()`` names it (a regular expression)
    pattern: str = ""


#: first match wins when a device name is looked up, so the PCIe H100 comes before the SXM parts
GPUS: dict[str, Gpu] = {g.name: g for g in (
    Gpu("H100-PCIe", 80, _peaks(756.0, 1513.0), r"H100.*PCIe"),
    Gpu("H800", 80, _peaks(989.0, 1979.0), r"H800"),
    Gpu("H100", 80, _peaks(989.0, 1979.0), r"H100"),
    Gpu("H200", 141, _peaks(989.0, 1979.0), r"H200"),
    Gpu("H20", 96, _peaks(148.0, 296.0), r"\bH20\b"),
    Gpu("A100", 80, _peaks(312.0), r"A100"),
    Gpu("A800", 80, _peaks(312.0), r"A800"),
)}
DEFAULT_GPU = "H800"


def gpu(name: str) -> Gpu:
    """The GPU named (case-insensitive); ValueError naming the choices otherwise."""
    for key, value in GPUS.items():
        if key.lower() == name.lower():
            return value
    raise ValueError(f"gpu={name}: unknown GPU; known: {', '.join(GPUS)}")


def datasheet_peak(device: str, precision: str = "bf16") -> float | None:
    """Dense TFLOP/s of ``device`` (a CUDA device name) at ``precision``; None where the table has none."""
    for entry in GPUS.values():
        if re.search(entry.pattern, device):
            return entry.peak_tflops.get(precision)
    return None


def mfu(tflops: float, device: str, precision: str = "bf16") -> float | None:
    """Model FLOPs utilisation: achieved TFLOP/s over the datasheet dense peak (None without one)."""
    peak = datasheet_peak(device, precision)
    return None if peak is None else tflops / peak
