"""Helpers of the fault suite: launching runs (fork server, plain process, torchrun), killing
them, auditing checkpoint directories against an uninterrupted reference run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterator

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TINY = ["model.family=qwen2_5", "model.size=tiny", "train.seq_length=32", "train.global_batch_size=4",
        "train.micro_batch_size=2", "train.log_interval=1", "optim.lr=3e-3"]


@dataclass
class Counts:
    kills: int = 0
    kills_in_save: int = 0
    kills_survived: int = 0
    resumes: int = 0
    resumes_exact: int = 0
    torchrun_kills: int = 0
    dirs_audited: int = 0
    dirs_rejected: int = 0
    corrupt_loaded: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"fault suite: kills {self.kills} (during a save {self.kills_in_save}, torchrun {self.torchrun_kills}), "
                f"kills survived {self.kills_survived}, resumes exact {self.resumes_exact}/{self.resumes}, "
                f"checkpoint dirs audited {self.dirs_audited} (rejected as incomplete {self.dirs_rejected}), "
                f"corrupt checkpoints loaded {self.corrupt_loaded}")


COUNTS = Counts()


def env_one_thread() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def train_args(out: Path, data: str, iters: int, *extra: str) -> list[str]:
    return ["train", *TINY, f"train.train_iters={iters}", f"data.train_path={data}", f"output_dir={out}", *extra]


# ---- processes -------------------------------------------------------------------------
class Run:
    """One training process (or a torchrun agent and its workers), in its own session."""

    def __init__(self, pid: int, log: Path, *, popen: subprocess.Popen | None = None) -> None:
        self.pid, self.log, self.popen = pid, log, popen
        self.started = time.monotonic()

    def poll(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        rc = Path(str(self.log) + ".rc")
        return int(rc.read_text()) if rc.is_file() and rc.read_text().strip() else None

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill_group()
                raise TimeoutError(f"run {self.pid} did not finish in {timeout}s; log {self.log}")
            time.sleep(0.05)
        return rc

    def kill(self) -> int:
        """SIGKILL the training process itself (its forked checkpoint writers are left orphaned)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.wait(60)

    def kill_group(self) -> None:
        """SIGKILL everything left of this run: its session (orphaned checkpoint writers) and,
        for torchrun, each worker's own session (torchrun starts workers in new sessions)."""
        for pid in [self.pid, *children_of(self.pid)]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _stat(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: [state, parent pid, ...]; raises OSError when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except IndexError:
        raise ProcessLookupError(pid) from None


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Every process in /proc with its ``_stat`` fields; those that end while being read are passed over."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            yield int(proc.name), _stat(proc.name)
        except OSError:
            continue


def children_of(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc)."""
    return [pid for pid, stat in _processes() if int(stat[1]) == parent]


def processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``text``."""
    found = []
    for pid, stat in _processes():
        try:
            if stat[0] != "Z" and text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def processes_in_sessions(sessions: Collection[int]) -> list[int]:
    """Live (not zombie) processes whose session id is one of ``sessions``, this process excepted.

    A zygote run leads its own session, and whatever it forks or spawns stays in it; those keep the
    zygote's command line (or a multiprocessing one), so no path on a command line names them."""
    return [pid for pid, stat in _processes() if int(stat[3]) in sessions and stat[0] != "Z" and pid != os.getpid()]


def outlived(text: str | None = None, seconds: float = 20.0, sessions: Collection[int] = ()) -> dict[int, str]:
    """Wait up to ``seconds`` for every process mentioning ``text``, or in one of ``sessions``, to end;
    SIGKILL those still alive then and return each one's parent and command line, for the failure message."""
    deadline = time.monotonic() + seconds

    def live() -> list[int]:
        return sorted({*(processes_mentioning(text) if text else ()), *processes_in_sessions(sessions)})

    while (alive := live()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {}
    for pid in alive:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            left[pid] = f"parent {_stat(pid)[1]}: {command}"
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    return left


class Zygote:
    """The fork server (``zygote.py``); ``runs`` holds each launched run's pid, which is also its session id."""

    def __init__(self) -> None:
        self.runs: set[int] = set()
        self.proc = subprocess.Popen([PY, str(Path(__file__).with_name("zygote.py"))], cwd=REPO, env=env_one_thread(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"fault-suite fork server did not start: {line!r}")

    def launch(self, argv: list[str], log: Path, *, env: dict[str, str] | None = None, fsize: int | None = None) -> Run:
        Path(str(log) + ".rc").unlink(missing_ok=True)
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "env": env or {}, "fsize": fsize}) + "\n")
        self.proc.stdin.flush()
        run = Run(json.loads(self.proc.stdout.readline())["pid"], log)
        self.runs.add(run.pid)
        return run

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def launch_process(argv: list[str], log: Path, *, torchrun: bool = False,
                   limit_rank: tuple[int, int] | None = None) -> Run:
    """A plain ``python -m pai_patch`` process, or ``torchrun --nproc_per_node 2`` (gloo).

    ``limit_rank=(rank, bytes)``: under torchrun, that rank alone may write no file larger
    than ``bytes`` (``limit_rank.py``), a full disk on one rank."""
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        entry = ["-m", "pai_patch"] if limit_rank is None else \
            [str(Path(__file__).with_name("limit_rank.py")), *map(str, limit_rank)]
        cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), *entry, *argv]
    else:
        cmd = [PY, "-m", "pai_patch", *argv]
    handle = open(log, "ab")
    popen = subprocess.Popen(cmd, cwd=REPO, env=env_one_thread(), stdout=handle, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    handle.close()
    return Run(popen.pid, log, popen=popen)


def error_line(run: Run, timeout: float = 300) -> str:
    """The one ``error:`` line a run that stopped on bad input or a fault ends with (exit status 2,
    no traceback)."""
    rc = run.wait(timeout)
    text = run.text()
    assert rc == 2, f"exit status {rc}, expected 2:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    line = [line for line in text.splitlines() if line.strip()][-1]
    assert line.startswith("error: "), line
    return line


def fresh_dir(path: Path) -> Path:
    """``path`` as a new empty directory (a rerun of a test starts clean)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def stopped_run(zygote: Zygote, out: Path, data: str, stop: int) -> list[str]:
    """Start the 10-iteration run that saves every 2 iterations in a fresh ``out``, stop it at
    iteration ``stop`` (``train.exit_interval``) with its tracker there, and return its arguments:
    the set-up of the tests that damage what a run left and then resume it."""
    argv = train_args(fresh_dir(out), data, 10, "checkpoint.save_interval=2")
    assert zygote.launch([*argv, f"train.exit_interval={stop}"], out / "log1").wait() == 0
    assert tracker(out / "checkpoint") == stop
    return argv


# ---- what a run left -------------------------------------------------------------------
def losses(out: Path) -> dict[int, list[float]]:
    """Every loss each iteration logged (a killed run's partial last line is skipped)."""
    seen: dict[int, list[float]] = {}
    path = out / "metrics.jsonl"
    if not path.exists():
        return seen
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        seen.setdefault(int(record["iteration"]), []).append(record["loss"])
    return seen


def first_losses(out: Path) -> dict[int, float]:
    """The loss each iteration logged first (an uninterrupted run logs each once)."""
    return {i: v[0] for i, v in losses(out).items()}


def last_losses(out: Path) -> dict[int, float]:
    """The loss each iteration logged last: after kills and resumes, the run that got past it."""
    return {i: v[-1] for i, v in losses(out).items()}


def metric_lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def tracker(root: Path) -> int | None:
    path = root / "latest_checkpointed_iteration.txt"
    return int(path.read_text()) if path.is_file() else None


def _metadata_digest(path: Path) -> tuple:
    """torch.distributed.checkpoint's ``.metadata`` minus its per-save ids (checkpoint path, uuid),
    as objects (their pickled bytes are not canonical)."""
    import pickle

    meta = pickle.loads(path.read_bytes())
    return (meta.state_dict_metadata, meta.storage_data, meta.planner_data)


def _canonical(obj):  # noqa: ANN001, ANN202
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), t.numpy().tobytes() if t.dtype != torch.bfloat16 else
                t.view(torch.int16).numpy().tobytes())
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def file_crcs(directory: Path) -> dict[str, tuple]:
    """Content digest of a checkpoint directory, equal for two saves of the same state."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != "COMPLETE.json":
            if p.name == ".metadata":  # its size varies with the save path it records
                out[str(p.relative_to(directory))] = (-1, _metadata_digest(p))
            elif p.suffix == ".pt":  # torch.save bytes depend on tensor storage layout, compare values
                import torch

                out[str(p.relative_to(directory))] = (-1, _canonical(torch.load(p, weights_only=False)))
            else:
                out[str(p.relative_to(directory))] = (p.stat().st_size, zlib.crc32(p.read_bytes()))
    return out


def audit(root: Path, reference: Path | None) -> list[str]:
    """Problems with the checkpoints under ``root`` (empty when sound).

    Every ``iter_*`` directory either fails the trainer's own verification (so it can never
    be loaded) or holds exactly the uninterrupted run's files for that iteration; the
    tracker always points at a directory that verifies.  Without a reference (another
    layout than the reference run's) only the verification is checked."""
    from pai_patch.training.checkpointing import CheckpointError, verify_marker

    problems = []
    latest = tracker(root)
    for directory in sorted(root.glob("iter_*")):
        COUNTS.dirs_audited += 1
        try:
            verify_marker(directory)
        except CheckpointError as err:
            COUNTS.dirs_rejected += 1
            if latest is not None and directory.name == f"iter_{latest:07d}":
                problems.append(f"the tracker points at {directory}, which does not verify: {err}")
            continue
        if reference is None:
            continue
        ref = reference / directory.name
        if not ref.is_dir():
            problems.append(f"{directory}: verifies but the reference run has no {ref.name}")
        elif file_crcs(directory) != file_crcs(ref):
            COUNTS.corrupt_loaded += 1
            problems.append(f"{directory}: verifies but differs from the uninterrupted run's {ref}")
    if latest is not None and not (root / f"iter_{latest:07d}").is_dir():
        problems.append(f"the tracker points at iteration {latest}, which is missing")
    return problems
