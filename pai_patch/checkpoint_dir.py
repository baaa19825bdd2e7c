"""A Megatron checkpoint directory's names, in one place: the trainer, the converter, generation and
the recipe stages all read and write it through these.

``<dir>/latest_checkpointed_iteration.txt`` names the latest complete iteration, or ``release`` for a
converted checkpoint; ``<dir>/iter_0000100/`` (or ``<dir>/release/``) holds that iteration.
"""

from __future__ import annotations

from pathlib import Path

from pai_patch.cli import CliError

TRACKER = "latest_checkpointed_iteration.txt"
RELEASE = "release"


class TrackerError(ValueError, CliError):
    """A tracker file that names no iteration (one-line CLI error)."""


def iteration_dir(root: str | Path, iteration: int | None) -> Path:
    """``iter_NNNNNNN`` of ``iteration``; ``release`` for None (what a conversion writes)."""
    return Path(root) / (RELEASE if iteration is None else f"iter_{iteration:07d}")


def has_checkpoint(root: str | Path) -> bool:
    return (Path(root) / TRACKER).is_file()


def latest_iteration(root: str | Path) -> int | None:
    """The iteration the tracker names (0 for ``release``); None when ``root`` has no tracker."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == RELEASE:
        return 0
    if not text.isdigit():
        raise TrackerError(f"{tracker}: expected an iteration number or '{RELEASE}', found {text!r}")
    return int(text)


def latest_dir(root: str | Path) -> tuple[Path, int]:
    """The directory the tracker names, and its iteration; FileNotFoundError when ``root`` has no tracker."""
    root = Path(root)
    iteration = latest_iteration(root)
    if iteration is None:
        raise FileNotFoundError(f"{root / TRACKER}: missing; not a Megatron checkpoint directory")
    released = (root / TRACKER).read_text().strip() == RELEASE
    return iteration_dir(root, None if released else iteration), iteration
