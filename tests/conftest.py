"""Shared fixtures: the shipped corpus as an idxmap, running the CLI in a subprocess, and the
converted tiny checkpoint with its single-process run that the layout tests compare against.

Training runs go through ``python -m pai_patch`` in a child process, as users run them:
torch.distributed and megatron-core keep global state that must not leak between tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pai_patch" / "assets" / "corpus"


@pytest.fixture(scope="session")
def corpus_prefix(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``<prefix>_text_document`` of the shipped pretraining corpus (built once per session)."""
    from pai_patch.data.pretrain import preprocess_pretrain
    from pai_patch.data.tokenizer import load_tokenizer

    prefix = tmp_path_factory.mktemp("corpus") / "pretrain"
    preprocess_pretrain(str(CORPUS / "pretrain.jsonl"), load_tokenizer("shipped"), prefix, progress=False)
    return f"{prefix}_text_document"


def dense_families() -> list[str]:
    """Every registered family on the shared dense decoder: a new one is tested without editing the tests."""
    from pai_patch.models import families
    from pai_patch.models.dense import DenseFamily

    return sorted(name for name, family in families().items() if isinstance(family, DenseFamily))


#: training steps of every layout-equivalence run (tests/test_train_parallel.py, _cp.py, _resume_layout.py)
LAYOUT_STEPS = 10


@pytest.fixture(scope="session")
def layout_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny Qwen2.5 HF model (``<root>/hf``) converted to torch_dist, which loads at any
    layout (``<root>/mcore``); made once per session for every layout test."""
    from pai_patch.recipes.hf_init import write_random_hf

    root = tmp_path_factory.mktemp("start")
    write_random_hf("qwen2_5", "tiny", root / "hf", "shipped", seed=3)
    run_cli("convert", "hf2mcore", "--model", "qwen2_5", "--size", "tiny", "--hf", str(root / "hf"),
            "--mcore", str(root / "mcore"), "--format", "torch_dist")
    return root / "mcore"


@pytest.fixture(scope="session")
def layout_reference(layout_start: Path, corpus_prefix: str,
                     tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The single-process losses every other layout must reproduce (one run per session)."""
    out = tmp_path_factory.mktemp("ref")
    train_from_start(layout_start, corpus_prefix, out)
    return losses(out)


def train_from_start(start: Path, corpus: str, out: Path, *extra: str, nproc: int = 1,
                     check: bool = True) -> subprocess.CompletedProcess:
    """The layout tests' run: LAYOUT_STEPS steps of tiny Qwen2.5 from ``start``, plus ``extra`` overrides."""
    return run_cli("train", "model.family=qwen2_5", "model.size=tiny", f"data.train_path={corpus}", f"output_dir={out}",
            f"checkpoint.load={start}", "train.seq_length=64", f"train.train_iters={LAYOUT_STEPS}", "optim.lr=1e-3",
            *extra, nproc=nproc, check=check)


def max_loss_diff(a: dict[int, float], b: dict[int, float]) -> float:
    """The largest loss difference of two layout runs, after checking both logged every step."""
    assert sorted(a) == sorted(b) == list(range(1, LAYOUT_STEPS + 1))
    return max(abs(a[i] - b[i]) for i in a)


def free_port() -> int:
    """A loopback port nobody listens on now, for torchrun's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, nproc: int = 1, env: dict[str, str] | None = None, check: bool = True,
            timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m pai_patch ARGS`` (under torchrun when nproc > 1) and return the result."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), "-m", "pai_patch", *args]
    else:
        cmd = [sys.executable, "-m", "pai_patch", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def run_torchrun_script(script: str | Path, *args: str, nproc: int = 2, timeout: int = 600) -> str:
    """Run a test file as its own ``torchrun`` job (one thread per rank) and return its stdout;
    a non-zero exit fails the test with the tail of both streams.  The ranks share one stdout
    pipe, so they report with :func:`report_line`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), str(script), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def report_line(*fields: object) -> None:
    """One line to stdout in a single write: torchrun runs its ranks unbuffered (``python -u``),
    where ``print`` writes each piece separately and two ranks' lines can interleave."""
    sys.stdout.write(" ".join(map(str, fields)) + "\n")


def losses(run_dir: Path) -> dict[int, float]:
    path = Path(run_dir) / "metrics.jsonl"
    return {r["iteration"]: r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}
