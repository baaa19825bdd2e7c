"""The CPU examples in README.md and docs/*.md, typed as written and in the order shown.

A block is one when an HTML comment ``<!-- cpu-example ... -->`` stands on the line before its opening fence.
They run in a copy of the repository (so the examples' default ``output/`` is the copy's), with this
session's ``.venv``; ``make test`` lines are skipped (that is the suite running this).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

MARK = re.compile(r"^<!-- cpu-example\b.*-->\s*$")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def cpu_examples(text: str) -> list[str]:
    """The commands of every marked block of ``text``, comments and continuation-free lines only."""
    lines, commands = text.splitlines(), []
    for i, line in enumerate(lines):
        if MARK.match(line) and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            for body in lines[i + 2:]:
                if body.startswith("```"):
                    break
                command = body.split("#", 1)[0].strip()
                if command:
                    commands.append(command)
    return commands


def test_marked_blocks_are_found() -> None:
    text = "x\n<!-- cpu-example -->\n```bash\nmake a   # why\n   # only a comment\nmake b\n```\n```bash\nmake c\n```\n"
    assert cpu_examples(text) == ["make a", "make b"]
    assert cpu_examples((ROOT / "README.md").read_text())  # README keeps at least one marked block


def test_documented_cpu_examples_run_in_order(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".venv", ".git", "output", "*.egg-info",
                                                              "__pycache__"))
    venv = Path(sys.executable).parents[1]
    env = dict(os.environ, VENV=str(venv))
    for doc in DOCS:
        for command in cpu_examples(doc.read_text()):
            if command.startswith("make test"):
                continue
            result = subprocess.run(command, shell=True, cwd=repo, env=env, capture_output=True, text=True,
                                    timeout=1800)
            assert result.returncode == 0, f"{doc.name}: {command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
