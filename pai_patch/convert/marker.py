"""A checkpoint directory's completeness marker, ``COMPLETE.json``: every file with its size and CRC-32.

The trainer writes it last into each ``iter_N`` (pai_patch/training/checkpointing.py), and
``hf2mcore`` into its ``release``, so a directory without it, or whose files disagree with it,
was not completely written or was damaged since.  Every reader (resume, ``convert mcore2hf``,
``generate``, ``serve``, a fine-tune's ``checkpoint.load``) checks it before loading, so a
half-written or corrupt checkpoint is refused by name instead of loading (or exporting) wrong.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from pai_patch.cli import CliError

MARKER = "COMPLETE.json"


class CheckpointError(RuntimeError, CliError):
    """A checkpoint that is missing, incomplete or does not fit the run (one-line CLI error)."""


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def file_crcs(paths: list[Path]) -> list[int]:
    """CRC-32 of each file, several files at once: zlib releases the GIL, so checksumming a
    large checkpoint (every file read once) runs at the disks' and cores' pace, not one core's."""
    if len(paths) <= 1:
        return [file_crc32(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(file_crc32, paths))


def _checkpoint_files(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MARKER]


def describe_files(directory: Path, rank: int = 0, size: int = 1) -> dict[str, dict[str, int]]:
    """Size and CRC-32 of the files of ``directory``; with ``rank`` of ``size``, of that rank's share
    (every size-th file), so the ranks of a job checksum a save in parallel."""
    share = [p for i, p in enumerate(_checkpoint_files(directory)) if i % size == rank]
    return {str(p.relative_to(directory)): {"size": p.stat().st_size, "crc32": crc}
            for p, crc in zip(share, file_crcs(share))}


def merge_shares(shares: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = {}
    for share in shares:
        merged.update(share)
    return dict(sorted(merged.items()))


def write_marker(directory: Path, files: dict[str, dict[str, int]]) -> None:
    marker = directory / MARKER
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"files": files}, indent=1))
        handle.flush()
        os.fsync(handle.fileno())


def _check_files(directory: Path, expected: dict[str, Any], *, checksums: bool) -> str | None:
    """The first problem with the files (missing or of the wrong size), else with this rank's
    share of their checksums, or None."""
    rank, ranks = world()
    to_checksum = []
    for i, (name, entry) in enumerate(sorted(expected.items())):
        length, crc = (entry, None) if isinstance(entry, int) else (entry.get("size"), entry.get("crc32"))
        path = directory / name
        if not path.is_file():
            return f"{path}: missing from checkpoint {directory}; the checkpoint is incomplete"
        if path.stat().st_size != length:
            return f"{path}: {path.stat().st_size} bytes, expected {length}; the file is corrupt (truncated or overwritten)"
        if checksums and crc is not None and i % ranks == rank:
            to_checksum.append((path, crc))
    for (path, crc), got in zip(to_checksum, file_crcs([path for path, _ in to_checksum])):
        if got != crc:
            return f"{path}: CRC-32 {got:08x}, expected {crc:08x}; the file is corrupt"
    return None


def verify_marker(directory: Path, *, checksums: bool = True) -> None:
    """Raise CheckpointError naming the first missing or corrupt file of ``directory``.

    Under torch.distributed every rank checks a share of the checksums and all ranks
    raise the same error, so none is left waiting in a collective."""
    directory = Path(directory)
    problem = None
    marker = directory / MARKER
    if not directory.is_dir():
        problem = f"{directory}: no such checkpoint directory"
    elif not marker.is_file():
        problem = f"{directory}: no {MARKER}; the checkpoint was not completely written"
    else:
        try:
            expected = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            expected = None
            problem = f"{marker}: unreadable completeness marker; the checkpoint is corrupt"
        if expected is not None:
            problem = _check_files(directory, expected, checksums=checksums)
    problems = [p for p in gather(problem) if p]
    if problems:
        raise CheckpointError(problems[0])


def _saved_by_trainer(iter_dir: Path) -> bool:
    """Whether ``iter_dir`` is one of the trainer's saves (its common.pt records the data position).

    The trainer always writes the marker, so one of its saves without it was cut short;
    converted and Megatron-LM checkpoints may have none."""
    common = iter_dir / "common.pt"
    if not common.is_file():
        return False
    try:
        state = torch.load(common, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a trainer's save we can tell; the loader names what is wrong
        return False
    return isinstance(state, dict) and "consumed_samples" in state


def warn_unverified(iter_dir: Path, override: str) -> None:
    """The one loud line of a read whose check the user turned off with ``override``."""
    if world()[0] == 0:
        print(f"warning: {override}: reading {iter_dir} without checking its completeness marker and checksums; "
              "a damaged checkpoint loads wrong", file=sys.stderr, flush=True)


def check_before_reading(ckpt_dir: Path, iter_dir: Path, iteration: int, *, verify: bool = True,
                         override: str = "--no-verify") -> None:
    """Refuse to read ``iter_dir`` (the tracker's ``iteration`` of ``ckpt_dir``) when it is incomplete or corrupt.

    A checkpoint with a marker is checked file by file (sizes and CRC-32s: one read of every
    file, as the save did); a trainer's save without one is refused.  ``verify=False`` (the
    user's ``override``, named in the refusal) reads it unchecked after a warning."""
    if not verify:
        warn_unverified(iter_dir, override)
        return
    if not (iter_dir / MARKER).is_file() and not _saved_by_trainer(iter_dir):
        return
    try:
        verify_marker(iter_dir)
    except CheckpointError as err:
        where = "release" if iter_dir.name == "release" else f"iteration {iteration}"
        raise CheckpointError(f"{err}; {where} of {ckpt_dir} not read ({override} reads it anyway)") from None
