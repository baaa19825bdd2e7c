"""The shipped ``pai_tiny_mc`` task: 4-way multiple choice over the SFT valid split.

Each SFT record carries its answer and three wrong choices, so the task scores the
loglikelihood of each option after the question.  The options are shuffled with a
per-record seed so the right answer is not always first (a model that prefers the
first option would otherwise score 100%); rebuilding gives the committed file byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pai_patch.utils import write_text_atomic

TASK_DIR = Path(__file__).resolve().parent / "tasks"
TASK_NAME = "pai_tiny_mc"
TASK_YAML = TASK_DIR / f"{TASK_NAME}.yaml"
TASK_DATA = TASK_DIR / f"{TASK_NAME}.jsonl"
SFT_VALID = Path(__file__).resolve().parents[1] / "assets" / "corpus" / "sft_valid.json"
SEED = 20241125


def mc_rows(records: list[dict], source: str = "sft_valid.json") -> list[dict]:
    """Question + shuffled options + index of the right one, validated record by record."""
    rows = []
    for i, rec in enumerate(records):
        wrong = rec.get("choices")
        if not isinstance(wrong, list) or len(wrong) != 3 or not rec.get("output"):
            raise ValueError(f"{source}: record {i} needs 'output' and 3 wrong 'choices' (got {rec!r})")
        question = rec["instruction"] + (f"\n{rec['input']}" if rec.get("input") else "")
        options = [str(rec["output"])] + [str(w) for w in wrong]
        order = list(range(4))
        random.Random(SEED + i).shuffle(order)
        rows.append({"question": question, "choices": [options[j] for j in order], "answer": order.index(0)})
    return rows


def build(src: Path = SFT_VALID, dst: Path = TASK_DATA) -> Path:
    """Regenerate the task's JSONL from the SFT valid split (``python -m pai_patch.evaluation.tiny_mc``)."""
    rows = mc_rows(json.loads(src.read_text(encoding="utf-8")), src.name)
    write_text_atomic(dst, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dst


if __name__ == "__main__":
    print(build())
