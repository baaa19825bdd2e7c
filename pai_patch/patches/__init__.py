"""All Megatron patches, applied by one call: :func:`apply_patches`.

Each patch module lists its patches with a one-line reason (``no_te.NO_TE_PATCHES``,
``cpu.CPU_PATCHES``).
"""

from __future__ import annotations

from pai_patch.patches import cpu, no_te


def apply_patches() -> list[str]:
    """Apply what this machine needs; returns the names of the patch sets applied."""
    applied = []
    if no_te.apply():
        applied.append("no-te")
    if cpu.apply():
        applied.append("cpu")
    return applied
