"""``python -m pai_patch recipe list|show|job`` — inspect what a recipe resolves to."""

from __future__ import annotations

import argparse

import yaml

from pai_patch.configio import to_dict
from pai_patch.recipes.resolve import available, load_recipe, train_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="available recipes")
    show = sub.add_parser("show", help="the recipe after size row and overrides (validated)")
    job = sub.add_parser("job", help="the training job a stage runs")
    job.add_argument("stage", choices=("pretrain", "sft"))
    for p in (show, job):
        p.add_argument("name", help="recipe name (recipes/<name>) or a recipe YAML path")
        p.add_argument("overrides", nargs="*", help="key=value")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print("\n".join(available()))
        return 0
    recipe = load_recipe(args.name, args.overrides)
    data = to_dict(recipe) if args.action == "show" else to_dict(train_config(recipe, args.stage))
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0
