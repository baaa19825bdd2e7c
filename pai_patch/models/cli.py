"""``python -m pai_patch models list|info``."""

from __future__ import annotations

import argparse
import json

from pai_patch.models import families, get_family


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="families and their sizes")
    info = sub.add_parser("info", help="configuration and parameter counts of one size")
    info.add_argument("family")
    info.add_argument("--size", default=None, help="size row (default: tiny)")
    info.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, fam in families().items():
            print(f"{name:12s} {', '.join(fam.sizes)}")
        return 0
    from pai_patch.models.params import info

    result = info(get_family(args.family), args.size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['family']} {result['size']['name']}: "
              f"{result['params_total_b']}B total, {result['params_active_b']}B active")
        for key, value in result["size"].items():
            print(f"  {key:26s} {value}")
    return 0
