"""JSON training data → token batches: plain text records (the seed's ``wudao_*.json``) or alpaca records.

Accepted inputs: a JSON file holding a list of objects, a JSON-lines file, or a folder of
``*.json`` / ``*.jsonl`` files (the seed's "single file or folder").  A record is text
(``text`` or ``content``; the loss covers every token) or alpaca (``instruction``,
optional ``input``, ``output``; the loss covers the answer only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str      # not trained on (empty for text records)
    completion: str  # trained on


def data_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: folder has no .json / .jsonl files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training data not found")
    return [path]


def read_records(path: Path) -> list[tuple[str, Any]]:
    """``(location, record)`` pairs; location is ``file:line`` (JSON lines) or ``file[index]``."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return [(f"{path}[{i}]", r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return out


def to_example(record: Any, where: str) -> Example:
    if isinstance(record, dict):
        for key in ("text", "content"):
            if isinstance(record.get(key), str) and record[key]:
                return Example("", record[key])
        if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
            extra = record.get("input") or ""
            return Example(record["instruction"] + (f"\n{extra}" if extra else "") + "\n", record["output"])
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{where}: expected a 'text' (or 'content') string or alpaca 'instruction' + 'output'; got {keys}")


def load_examples(path: str | Path) -> list[Example]:
    examples = [to_example(rec, where) for f in data_files(path) for where, rec in read_records(f)]
    if not examples:
        raise ValueError(f"{path}: no training records")
    return examples


def encode(example: Example, tokenizer: Any, seq_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (prompt masked), EOS appended, truncated to ``seq_len``."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
    answer = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + answer)[:seq_len]
    labels = ([IGNORE] * len(prompt) + answer)[:seq_len]
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; padding is masked out of attention and loss."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
