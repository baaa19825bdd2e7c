"""Datasheet facts of the GPUs the recipes are run on (PAI's H800/H20, and H100/H200/A100)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    #: HBM capacity, in GB (10^9 bytes) as the datasheet states it
    memory_gb: float


GPUS: dict[str, Gpu] = {g.name: g for g in (
    Gpu("H800", 80), Gpu("H100", 80), Gpu("H200", 141), Gpu("H20", 96), Gpu("A100", 80),
)}
DEFAULT_GPU = "H800"


def gpu(name: str) -> Gpu:
    """The GPU named (case-insensitive); ValueError naming the choices otherwise."""
    for key, value in GPUS.items():
        if key.lower() == name.lower():
            return value
    raise ValueError(f"gpu={name}: unknown GPU; known: {', '.join(GPUS)}")
