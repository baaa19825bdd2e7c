"""``python -m pai_patch recipe list|show|get|job`` — inspect what a recipe resolves to.

``get`` prints one value, so that the seed wrappers under toolkits/ take their defaults (such as the
checkpoint format a converter writes) from the recipe instead of repeating them."""

from __future__ import annotations

import argparse

import yaml

from pai_patch.configio import ConfigError, to_dict
from pai_patch.recipes.resolve import available, load_recipe, train_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="available recipes")
    show = sub.add_parser("show", help="the recipe after size row and overrides (validated)")
    get = sub.add_parser("get", help="one value of the resolved recipe, e.g. convert.format")
    job = sub.add_parser("job", help="the training job a stage runs")
    job.add_argument("stage", choices=("pretrain", "sft"))
    for p in (show, get, job):
        p.add_argument("name", help="recipe name (recipes/<name>) or a recipe YAML path")
        if p is get:
            p.add_argument("key", help="dotted key, e.g. convert.format")
        p.add_argument("overrides", nargs="*", help="key=value")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print("\n".join(available()))
        return 0
    recipe = load_recipe(args.name, args.overrides)
    if args.action == "get":
        print(_value(to_dict(recipe), args.key))
        return 0
    data = to_dict(recipe) if args.action == "show" else to_dict(train_config(recipe, args.stage))
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _value(data: dict, key: str) -> object:
    """The value at a dotted key; a section or a missing key is one error line."""
    node: object = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"recipe key {key!r}: no such key")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"recipe key {key!r} is a section; name one of its keys: {', '.join(node)}")
    return "null" if node is None else str(node).lower() if isinstance(node, bool) else node
