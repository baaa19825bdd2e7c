"""Golden losses: the first 20 training losses of each family's ``tiny`` size on the shipped corpus.

They live in ``tests/golden/<family>.json`` and a test retrains and compares them, so any change
to the numerics (initialisation, data order, loss, optimizer, kernels) fails a test and can only
land together with a regenerated file — which makes it a visible diff in review.

Regenerate (after a deliberate numerics change) with ``make golden``, i.e.
``python -m pai_patch.reproduce.golden --update``.  ``python -m pai_patch.reproduce.golden``
alone retrains and compares without writing.

Comparison is bitwise: one CPU process in fp32 with fixed seeds gives identical losses on every
rerun.  Only when the stored file was made with another torch build or CPU kernel level
(``torch.backends.cpu.get_cpu_capability()``: AVX2 vs AVX512 kernels reduce in another order)
do we allow ``CROSS_PLATFORM_RTOL``; a single changed initial weight moves the losses by far
more than that (see tests/test_reproduce_golden.py).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pai_patch.reproduce.lock import ROOT, sha256_file

ITERATIONS = 20
FAMILIES = ("qwen2_5", "llama2", "deepseek_v2")
GOLDEN_DIR = ROOT / "tests" / "golden"
CORPUS = ROOT / "pai_patch" / "assets" / "corpus" / "pretrain.jsonl"
#: relative tolerance across torch builds / CPU kernel levels; same platform compares exactly
CROSS_PLATFORM_RTOL = 1e-4


def golden_path(family: str) -> Path:
    return GOLDEN_DIR / f"{family}.json"


def available_families() -> list[str]:
    """The families that build here (one may still be in progress in a checkout)."""
    from pai_patch.models import get_family

    out = []
    for name in FAMILIES:
        try:
            get_family(name).size("tiny")
        except (KeyError, ValueError, ImportError):
            continue
        out.append(name)
    return out


def platform() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def prepare_data(workdir: Path) -> Path:
    """The shipped corpus tokenized with the shipped tokenizer; returns the dataset prefix."""
    from pai_patch.data.pretrain import preprocess_pretrain
    from pai_patch.data.tokenizer import load_tokenizer

    prefix = workdir / "pretrain"
    dataset = workdir / "pretrain_text_document"
    if not Path(f"{dataset}.idx").exists():
        preprocess_pretrain(str(CORPUS), load_tokenizer("shipped"), prefix)
    return dataset


def train_overrides(family: str, dataset: Path, out: Path) -> list[str]:
    """Exactly the documented direct run: `python -m pai_patch train <these>`."""
    return [f"model.family={family}", "model.size=tiny", f"train.train_iters={ITERATIONS}",
            f"data.train_path={dataset}", f"output_dir={out}"]


def measure(family: str, workdir: Path, *, perturb: float = 0.0) -> dict[str, Any]:
    """Train in a fresh process (its own process group and seeds) and return the record.

    ``perturb`` adds that amount to one initial weight (tests use it to show the check bites).
    """
    dataset = prepare_data(workdir)
    out = workdir / f"{family}-run{'-perturbed' if perturb else ''}"
    cmd = [sys.executable, "-m", "pai_patch.reproduce.golden", "_train", "--perturb", repr(perturb),
           *train_overrides(family, dataset, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"golden run of {family} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"family": family, "size": "tiny", "iterations": ITERATIONS,
            "command": " ".join(["python -m pai_patch train",
                                 *train_overrides(family, Path("<prefix>"), Path("<dir>"))]),
            "dataset_sha256": {ext: sha256_file(Path(f"{dataset}.{ext}")) for ext in ("bin", "idx")},
            **platform(), "losses": [r["loss"] for r in records if "loss" in r]}


def compare(stored: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """Each way ``measured`` departs from ``stored``; empty when it reproduces."""
    problems = []
    if stored["dataset_sha256"] != measured["dataset_sha256"]:
        problems.append(f"tokenized shipped corpus differs: stored {stored['dataset_sha256']}, "
                        f"now {measured['dataset_sha256']}")
    same_platform = all(stored.get(k) == measured.get(k) for k in ("torch", "cpu_capability"))
    rtol = 0.0 if same_platform else CROSS_PLATFORM_RTOL
    a, b = stored["losses"], measured["losses"]
    if len(a) != len(b):
        problems.append(f"{len(b)} losses measured, {len(a)} stored")
    for i, (want, got) in enumerate(zip(a, b), start=1):
        if not (math.isfinite(got) and abs(got - want) <= rtol * abs(want)):
            problems.append(f"iteration {i}: loss {got!r}, golden {want!r} (diff {got - want:+.3e}, rtol {rtol})")
    return problems


def _train(args: argparse.Namespace) -> int:
    """Child process: one training run, optionally with one initial weight nudged."""
    from pai_patch.training.cli import load_job
    from pai_patch.training.loop import Trainer

    trainer = Trainer(load_job(None, args.overrides))
    if args.perturb:
        perturb_one_weight(trainer.model[0], args.perturb)
    trainer.fit()
    return 0


def perturb_one_weight(model: Any, delta: float) -> str:
    """Add ``delta`` to element [0, 0] of the first layer's first matrix; returns its name."""
    import torch

    for name, param in model.named_parameters():
        if "layers.0." in name and param.dim() == 2:
            with torch.no_grad():
                param.view(-1)[0] += delta
            return name
    raise ValueError("no 2-D parameter in layer 0 to perturb")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_train"]:
        parser = argparse.ArgumentParser(prog="golden _train")
        parser.add_argument("--perturb", type=float, default=0.0)
        parser.add_argument("overrides", nargs="*")
        return _train(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m pai_patch.reproduce.golden", description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite tests/golden/<family>.json")
    parser.add_argument("--family", action="append", help="default: every family that builds")
    args = parser.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory(prefix="pai-golden-") as tmp:
        for family in args.family or available_families():
            measured = measure(family, Path(tmp))
            path = golden_path(family)
            if args.update:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(measured, indent=1) + "\n")
                print(f"{family}: wrote {path} (final loss {measured['losses'][-1]:.4f})")
                continue
            problems = compare(json.loads(path.read_text()), measured) if path.exists() else [f"no {path}"]
            failed |= bool(problems)
            print(f"{family}: {'reproduces' if not problems else 'DIFFERS'}")
            for p in problems:
                print(f"  {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
