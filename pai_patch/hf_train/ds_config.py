"""Render ``ds_config_TEMPLATE.json``: every value spelled ``"${NAME}"`` is replaced by a typed value.

A template is plain JSON (valid before rendering) so users can edit it with any tool; a
placeholder left unfilled or a value we cannot supply is an error naming both, rather than
DeepSpeed failing later on the string ``"${ZERO_STAGE}"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "recipes" / "llama2" / "ds_config_TEMPLATE.json"
PLACEHOLDER = re.compile(r"^\$\{([A-Z_][A-Z0-9_]*)\}$")
ZERO_STAGES = (0, 1, 2, 3)


def template_values(*, zero_stage: int, micro_batch: int, grad_accum: int, lr: float, precision: str,
                    warmup_steps: int, total_steps: int, torch_adam: bool) -> dict[str, Any]:
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage {zero_stage}: expected one of {', '.join(map(str, ZERO_STAGES))}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r}: expected fp32, bf16 or fp16")
    for name, value in (("micro batch", micro_batch), ("gradient accumulation steps", grad_accum),
                        ("total steps", total_steps)):
        if value < 1:
            raise ValueError(f"{name} {value}: expected >= 1")
    if not lr > 0:
        raise ValueError(f"learning rate {lr}: expected > 0")
    return {"ZERO_STAGE": zero_stage, "MICRO_BATCH": micro_batch, "GA_STEPS": grad_accum, "LR": lr,
            "BF16": precision == "bf16", "FP16": precision == "fp16", "WARMUP_STEPS": max(1, min(warmup_steps, total_steps)),
            "TOTAL_STEPS": total_steps, "TORCH_ADAM": torch_adam}


def render(template: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """The template with its placeholders filled; ValueError names any placeholder without a value."""
    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"{template}: DeepSpeed config template not found")
    try:
        data = json.loads(template.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{template}:{err.lineno}: not valid JSON ({err.msg})") from None

    def fill(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: fill(v, f"{where}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v, f"{where}[{i}]") for i, v in enumerate(node)]
        match = PLACEHOLDER.match(node) if isinstance(node, str) else None
        if match is None:
            return node
        if match.group(1) not in values:
            raise ValueError(f"{template}: placeholder {node} at {where.lstrip('.')} has no value; "
                             f"known: {', '.join(sorted(values))}")
        return values[match.group(1)]

    return fill(data, "")
