"""cmmlu / ceval-valid from a local directory (the layout of the seeds' ``cmmlu.tgz`` / ``ceval.tgz``).

lm-eval's cmmlu and ceval YAMLs point at hub datasets (``haonan-li/cmmlu``, ``ceval/ceval-exam``),
which an offline cluster cannot reach.  The subject list, prompt and metrics stay lm-eval's own
(read from its pinned YAMLs); only the data source is swapped for the CSV files of the
upstream releases:

* CMMLU: ``cmmlu/test/<subject>.csv`` and ``cmmlu/dev/<subject>.csv``
  (columns ``,Question,A,B,C,D,Answer``);
* C-Eval: ``ceval/val/<subject>_val.csv`` and ``ceval/dev/<subject>_dev.csv``
  (columns ``id,question,A,B,C,D,answer[,explanation]``).

``DIR`` may be the dataset folder itself, its parent (``DIR/cmmlu``), or either with a
``data/`` level in between, which covers the archives as published and as re-packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Benchmark:
    group: str            # lm-eval group name
    folder: str           # folder name inside --data-dir
    eval_split: str       # lm-eval split key in the YAML (test_split / validation_split)
    eval_dir: str         # folder of the evaluated split in the release
    suffix: str           # file name suffix per split: "" (cmmlu) or "_val" (ceval)
    template: str         # lm-eval's shared YAML for the subjects
    task_dir: str         # folder under lm_eval/tasks


BENCHMARKS = {
    "cmmlu": Benchmark("cmmlu", "cmmlu", "test_split", "test", "", "_default_template_yaml", "cmmlu"),
    "ceval-valid": Benchmark("ceval-valid", "ceval", "validation_split", "val", "_val", "_default_ceval_yaml", "ceval"),
}


def lm_eval_task_dir(bench: Benchmark) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent / bench.task_dir


def subjects(bench: Benchmark) -> dict[str, dict[str, Any]]:
    """``{task name: merged lm-eval config}`` for every subject of the group, from lm-eval's YAMLs."""
    folder = lm_eval_task_dir(bench)
    base = yaml.safe_load((folder / bench.template).read_text(encoding="utf-8"))
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        if cfg.get("include") != bench.template:
            continue
        merged = {**base, **{k: v for k, v in cfg.items() if k != "include"}}
        out[merged["task"]] = merged
    if not out:
        raise FileNotFoundError(f"lm-eval's {bench.group} subject YAMLs not found under {folder}")
    return out


def find_root(data_dir: Path, bench: Benchmark) -> Path | None:
    """The folder holding ``<eval_dir>/`` for this benchmark, or None."""
    for cand in (data_dir / bench.folder, data_dir / bench.folder / "data", data_dir, data_dir / "data"):
        split = cand / bench.eval_dir
        if split.is_dir() and any(split.glob(f"*{bench.suffix}.csv")):
            return cand
    return None


def benchmark_of(task: str) -> Benchmark | None:
    """The benchmark a task name belongs to: a group (``cmmlu``) or one subject (``cmmlu_agronomy``)."""
    if task in BENCHMARKS:
        return BENCHMARKS[task]
    for bench in BENCHMARKS.values():
        if task.startswith(bench.group + "_") and task in subjects(bench):
            return bench
    return None


def local_task_configs(task: str, data_dir: str | Path | None) -> list[dict[str, Any]]:
    """lm-eval task dicts for a group (every subject) or one subject, reading CSVs under ``data_dir``.

    Raises FileNotFoundError naming the directory, the layout expected and the missing files.
    """
    bench = benchmark_of(task)
    if bench is None:
        raise KeyError(f"{task!r} is not a cmmlu / ceval-valid task")
    group = bench.group
    layout = (f"{bench.folder}/{bench.eval_dir}/<subject>{bench.suffix}.csv "
              f"(+ {bench.folder}/dev/<subject>_dev.csv for few-shot)" if bench.suffix else
              f"{bench.folder}/{bench.eval_dir}/<subject>.csv (+ {bench.folder}/dev/<subject>.csv for few-shot)")
    if data_dir is None:
        raise FileNotFoundError(
            f"{group} needs its dataset and the hub is offline: extract {bench.folder}.tgz and pass "
            f"--data-dir DIR with {layout}")
    data_dir = Path(data_dir)
    root = find_root(data_dir, bench)
    if root is None:
        raise FileNotFoundError(f"{group}: no {layout} under {data_dir} (extract {bench.folder}.tgz there)")
    configs, missing = [], []
    wanted = subjects(bench) if task == group else {task: subjects(bench)[task]}
    for name, cfg in wanted.items():
        subject = cfg["dataset_name"]
        dev_suffix = "_dev" if bench.suffix else ""
        eval_file = root / bench.eval_dir / f"{subject}{bench.suffix}.csv"
        dev_file = root / "dev" / f"{subject}{dev_suffix}.csv"
        if not eval_file.is_file():
            missing.append(eval_file.name)
            continue
        files = {bench.eval_dir: str(eval_file)}
        local = {k: v for k, v in cfg.items() if k not in ("dataset_name", "fewshot_split", "fewshot_config")}
        if dev_file.is_file():
            files["dev"] = str(dev_file)
            local["fewshot_split"] = "dev"
            local["fewshot_config"] = cfg.get("fewshot_config")
        local.update(dataset_path="csv", dataset_kwargs={"data_files": files}, task=name)
        local[bench.eval_split] = bench.eval_dir
        configs.append(local)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{group}: {len(missing)} of {len(configs) + len(missing)} subjects missing under "
            f"{root / bench.eval_dir}: {shown} (expected {layout})")
    return configs
