"""``evaluate()``: lm-eval on an HF checkpoint, in-process and offline.

Running lm-eval in-process (its ``HFLM`` class) rather than through ``accelerate launch -m
lm_eval`` keeps one Python process per stage, lets the recipe stage get the scores back as
a dict, and lets us hand lm-eval task configs that read local files instead of hub datasets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from pai_patch.evaluation import local_data, tiny_mc
from pai_patch.utils import write_text_atomic

DEFAULT_TASKS = (tiny_mc.TASK_NAME,)
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline() -> None:
    """No network at run time: every dataset and model must come from local files."""
    os.environ.update(OFFLINE_ENV)
    try:  # `datasets` reads its offline switch at import time; keep an already-imported copy in step
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def tiny_mc_config() -> dict[str, Any]:
    """The shipped YAML with its data file made absolute."""
    cfg = yaml.safe_load(tiny_mc.TASK_YAML.read_text(encoding="utf-8"))
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {k: str(tiny_mc.TASK_DIR / v) for k, v in files.items()}
    if not tiny_mc.TASK_DATA.is_file():
        raise FileNotFoundError(f"{tiny_mc.TASK_DATA} missing: run `python -m pai_patch.evaluation.tiny_mc`")
    return cfg


def task_configs(tasks: list[str], data_dir: str | Path | None) -> list[str | dict[str, Any]]:
    """lm-eval task entries: dicts for the tasks we serve from local files, names for the rest."""
    out: list[str | dict[str, Any]] = []
    for task in tasks:
        if task == tiny_mc.TASK_NAME:
            out.append(tiny_mc_config())
        elif local_data.benchmark_of(task) is not None:
            out.extend(local_data.local_task_configs(task, data_dir))
        else:
            out.append(task)  # any other lm-eval task: its data must already be in the local HF cache
    return out


def check_hf_dir(hf_dir: Path) -> None:
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json — expected an HF checkpoint (convert with `pai_patch convert`)")
    from pai_patch.data.tokenizer import TOKENIZER_FILES, has_tokenizer

    if not has_tokenizer(hf_dir):
        raise FileNotFoundError(f"{hf_dir}: no tokenizer files ({' / '.join(TOKENIZER_FILES)}) next to the weights")


def summarize(results: dict[str, Any], tasks: list[str]) -> dict[str, float]:
    """``{"<task>/acc": x, ...}`` for the requested tasks (groups aggregated sample-weighted)."""
    scores: dict[str, float] = {}
    per_task = results["results"]
    sizes = {k: v.get("original", v.get("effective", 0)) for k, v in results.get("n-samples", {}).items()}
    for task in tasks:
        members = [t for t in per_task if t == task or t.startswith(task + "_")] if task not in per_task else [task]
        for metric in ("acc", "acc_norm"):
            vals = [(per_task[t][f"{metric},none"], sizes.get(t, 1)) for t in members if f"{metric},none" in per_task[t]]
            if vals:
                total = sum(n for _, n in vals) or len(vals)
                scores[f"{task}/{metric}"] = float(sum(v * n for v, n in vals) / total)
    return scores


def evaluate(hf_dir: str | Path, tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS, *,
             data_dir: str | Path | None = None, limit: int | None = None, batch_size: int = 8,
             output: str | Path | None = None, apply_chat_template: bool = False,
             num_fewshot: int | None = None) -> dict[str, float]:
    """Score an HF checkpoint; returns ``{"<task>/acc": ..., "<task>/acc_norm": ...}``.

    ``output`` (optional) receives a JSON file with the scores and lm-eval's per-task results.
    """
    set_offline()
    hf_dir = Path(hf_dir)
    check_hf_dir(hf_dir)
    tasks = list(tasks)
    entries = task_configs(tasks, data_dir)

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=str(hf_dir), batch_size=batch_size, device="cuda" if _cuda() else "cpu",
                 trust_remote_code=True)
    results = lm_eval.simple_evaluate(model=model, tasks=entries, limit=limit, num_fewshot=num_fewshot,
                                      apply_chat_template=apply_chat_template, log_samples=False,
                                      bootstrap_iters=0)
    if results is None:  # non-zero ranks under a distributed launch
        return {}
    scores = summarize(results, tasks)
    if output is not None:
        report = {"hf_dir": str(hf_dir), "tasks": tasks, "limit": limit, "apply_chat_template": apply_chat_template,
                  "num_fewshot": num_fewshot, "scores": scores,
                  "results": results["results"], "n-samples": results.get("n-samples", {})}
        write_text_atomic(output, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    return scores


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
