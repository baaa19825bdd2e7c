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


def _tracked(root: Path) -> tuple[str, int] | None:
    """What the tracker says (its text, and the iteration it names: 0 for ``release``); None without one."""
    tracker = root / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == RELEASE:
        return text, 0
    if not text.isdigit():
        raise TrackerError(f"{tracker}: expected an iteration number or '{RELEASE}', found {text!r}")
    return text, int(text)


def latest_iteration(root: str | Path) -> int | None:
    """The iteration the tracker names (0 for ``release``); None when ``root`` has no tracker."""
    tracked = _tracked(Path(root))
    return None if tracked is None else tracked[1]


def latest_dir(root: str | Path) -> tuple[Path, int]:
    """The directory the tracker names, and its iteration; FileNotFoundError when ``root`` has no tracker."""
    root = Path(root)
    tracked = _tracked(root)
    if tracked is None:
        raise FileNotFoundError(f"{root / TRACKER}: missing; not a Megatron checkpoint directory")
    text, iteration = tracked
    return iteration_dir(root, None if text == RELEASE else iteration), iteration
