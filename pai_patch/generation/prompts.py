"""The prompts file: one JSON object per line with ``query``, ``prompt`` or ``text`` (the seeds use all three)."""

from __future__ import annotations

import json
from pathlib import Path

PROMPT_KEYS = ("query", "prompt", "text")


def read_prompts(path: str | Path) -> list[str]:
    """All prompts, or a ValueError naming ``file:line`` and what that line should hold.

    The whole file is checked before any generation starts, so a bad line at the end
    does not cost a long run (and nothing is written).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompts file not found")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}); expected an object like "
                             '{"prompt": "..."}') from None
        text = next((record[k] for k in PROMPT_KEYS if isinstance(record, dict) and k in record), None)
        if not isinstance(text, str) or not text:
            raise ValueError(f"{path}:{number}: expected a non-empty string under one of "
                             f"{', '.join(PROMPT_KEYS)}; got {line.strip()[:80]}")
        prompts.append(text)
    if not prompts:
        raise ValueError(f"{path}: no prompts (expected one JSON object per line)")
    return prompts
