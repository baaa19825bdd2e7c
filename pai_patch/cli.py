"""``python -m pai_patch <command>``: one entry point, one module per command.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this
table is the only place that lists them, so commands load lazily (``--help`` and
``models info`` do not import megatron-core's training stack).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("pai_patch.models.cli", "inspect model families and sizes"),
    "train": ("pai_patch.training.cli", "pretrain or fine-tune with megatron-core"),
    "stage": ("pai_patch.recipes.stages", "run one stage of a recipe (what `make` calls)"),
    "recipe": ("pai_patch.recipes.cli", "show / resolve / validate a recipe"),
    "seed": ("pai_patch.recipes.seed_args", "run a seed launcher's positional interface over its recipe"),
    "preprocess": ("pai_patch.data.cli", "JSON corpora and SFT data to Megatron idxmap"),
    "data": ("pai_patch.data.inspect_cli", "inspect or validate an idxmap dataset"),
    "convert": ("pai_patch.convert.cli", "HF <-> Megatron-Core checkpoint conversion"),
    "generate": ("pai_patch.generation.cli", "text generation from a Megatron-Core checkpoint"),
    "serve": ("pai_patch.generation.server", "streaming websocket generation service (the seed's client)"),
    "eval": ("pai_patch.evaluation.cli", "lm-eval on a checkpoint"),
    "hf_train": ("pai_patch.hf_train.cli", "HF + DeepSpeed ZeRO training"),
    "doctor": ("pai_patch.doctor", "what this environment has and what each switch will use"),
    "lock": ("pai_patch.reproduce.lock_cli", "compare a run with its recipe lock"),
}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m pai_patch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        if err.name == COMMANDS[name][0]:
            print(f"error: command {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    cmd_parser = argparse.ArgumentParser(prog=f"python -m pai_patch {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (CliError, KeyError, ValueError, FileNotFoundError) as err:
        if os.environ.get("PAI_PATCH_TRACEBACK", "0") not in ("", "0"):
            raise  # the whole traceback, for an error whose one line is not enough
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
