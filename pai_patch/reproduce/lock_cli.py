"""``python -m pai_patch lock check RUN_DIR [--recipe R]`` / ``lock update recipe=R``.

``check`` prints every difference between what a run ran with (its ``lock.json``), the
recipe's ``lock:`` section and this environment, one per line, and exits 1 when there is any;
``update`` regenerates a recipe's ``lock:`` section from the Dockerfile, requirements.lock
and the recipe's data (run it after a deliberate pin or data change; review the diff).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pai_patch.cli import CliError
from pai_patch.reproduce import lock as L


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="compare a run directory with its recipe lock and this environment")
    check.add_argument("run_dir", type=Path)
    check.add_argument("--recipe", help="recipe name or YAML (default: the one the run recorded)")
    check.add_argument("--no-env", action="store_true", help="do not compare with the packages installed now")
    update = sub.add_parser("update", help="regenerate a recipe's lock section")
    update.add_argument("recipe", help="recipe=NAME (or NAME)")


def _recipe_and_size(args: argparse.Namespace, run: dict) -> tuple[str, str | None]:
    name = args.recipe or run.get("recipe")
    if not name:
        raise CliError(f"{args.run_dir / L.LOCK_FILE} names no recipe (a direct `train` run): pass --recipe NAME")
    return name, (run.get("model") or {}).get("size")


def check(args: argparse.Namespace) -> int:
    from pai_patch.recipes.resolve import load_recipe

    run = L.read_run_lock(args.run_dir)
    name, size = _recipe_and_size(args, run)
    recipe = load_recipe(name, [f"model.size={size}"] if size else [])
    if not recipe.lock:
        raise CliError(f"recipe {name} has no lock section; "
                       f"create it with `python -m pai_patch lock update recipe={name}`")
    diffs, notes = L.diff_run(recipe.lock, run, None if args.no_env else L.installed_versions())
    for note in notes:
        print(f"note: {note}")
    for diff in diffs:
        print(f"DIFF {diff}")
    verdict = "matches" if not diffs else f"{len(diffs)} difference(s) from"
    print(f"{args.run_dir}: {verdict} the lock of recipe {recipe.recipe} ({recipe.model.size})")
    return 1 if diffs else 0


def update(args: argparse.Namespace) -> int:
    from pai_patch.recipes.resolve import recipe_file

    name = args.recipe.split("=", 1)[1] if args.recipe.startswith("recipe=") else args.recipe
    path = recipe_file(name)
    lock = L.build_recipe_lock(name)
    text = path.read_text(encoding="utf-8")
    new = L.replace_lock_block(text, name, L.render_lock_yaml(name, lock))
    from pai_patch.utils import write_text_atomic

    write_text_atomic(path, new)
    print(f"{path}: lock {'unchanged' if new == text else 'updated'} ({len(lock['files'])} files)")
    return 0


def run(args: argparse.Namespace) -> int:
    return check(args) if args.action == "check" else update(args)
