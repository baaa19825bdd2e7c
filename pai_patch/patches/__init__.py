"""All Megatron patches, applied by one call: :func:`apply_patches`.

Each patch module lists its patches with a one-line reason (see ``cpu.CPU_PATCHES``).
"""

from __future__ import annotations

from pai_patch.patches import cpu


def apply_patches() -> list[str]:
    """Apply what this machine needs; returns the names of the patch sets applied."""
    applied = []
    if cpu.apply():
        applied.append("cpu")
    return applied
