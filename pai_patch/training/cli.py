"""``python -m pai_patch train [--config job.yaml] [key=value ...]``.

Without ``--config`` the job starts from the defaults of :class:`TrainConfig`; every
``section.key=value`` override is validated against the schema.
"""

from __future__ import annotations

import argparse
import json
import os

from pai_patch.configio import apply_overrides, from_dict, load_yaml, parse_override
from pai_patch.training.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="job YAML (sections: model, parallel, optim, train, data, checkpoint)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--print-config", action="store_true", help="print the resolved job and exit")


def load_job(config: str | None, overrides: list[str]) -> TrainConfig:
    data = load_yaml(config) if config else {}
    data = apply_overrides(data, [parse_override(o) for o in overrides])
    return from_dict(TrainConfig, data)


def run(args: argparse.Namespace) -> int:
    # Megatron-LM's launchers export it: one CUDA stream queue keeps the TP/SP collectives ordered before the
    # GEMMs they overlap with (megatron warns at the first TP layer without it); a value the user set is kept
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    cfg = load_job(args.config, args.overrides)
    if args.print_config:
        from pai_patch.configio import to_dict

        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from pai_patch.training.loop import run_training

    print(summary_line(run_training(cfg), cfg.train.iterations))
    return 0


def summary_line(result: dict, iterations: int) -> str:
    """The run's last line; a run resumed at its last iteration has no loss to show (it printed 'loss nan')."""
    if result["last"] is None:
        return f"done: already at iteration {result['iteration']} of {iterations}; nothing was trained"
    return f"done: iteration {result['iteration']} ({result['stopped']}), loss {result['last']['loss']:.4f}"
