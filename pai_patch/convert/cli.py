"""``python -m pai_patch convert hf2mcore|mcore2hf|verify``: checkpoint conversion commands."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Iterator

from pai_patch.checkpoint_dir import TRACKER

FORMATS = ("torch_dist", "legacy")
DTYPE_CHOICES = ("fp32", "bf16", "fp16")


def _size_bytes(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="hf2mcore|mcore2hf|verify")
    model_help = "model family (default: from the HF config.json architectures)"
    size_help = "size row (default: the shape in the HF config.json, so any checkpoint of the family converts)"

    to_mcore = sub.add_parser("hf2mcore", help="HF safetensors -> Megatron-Core checkpoint")
    to_mcore.add_argument("--model", help=model_help)
    to_mcore.add_argument("--size", help=size_help)
    to_mcore.add_argument("--hf", required=True, type=Path, help="HF checkpoint directory (input)")
    to_mcore.add_argument("--mcore", required=True, type=Path, help="Megatron-Core checkpoint directory (output)")
    to_mcore.add_argument("--tp", type=int, default=1)
    to_mcore.add_argument("--pp", type=int, default=1)
    to_mcore.add_argument("--ep", type=int, default=1)
    to_mcore.add_argument("--vp", type=int, help="legacy: virtual-pipeline chunks per stage (model0, model1, ...)")
    to_mcore.add_argument("--pp0-layers", type=int, help="legacy: layers on the first pipeline stage (uneven split)")
    to_mcore.add_argument("--format", choices=FORMATS, default="torch_dist",
                          help="torch_dist loads at any TP/PP/EP; legacy files are per rank")
    to_mcore.add_argument("--dtype", choices=DTYPE_CHOICES, help="output precision (default: as stored)")
    to_mcore.add_argument("--use-te", action="store_true",
                          help="legacy only: Transformer-Engine spec names (fused layer norms)")

    to_hf = sub.add_parser("mcore2hf", help="Megatron-Core checkpoint (converted or trained) -> HF safetensors")
    to_hf.add_argument("--model", help=model_help)
    to_hf.add_argument("--size", help=size_help)
    to_hf.add_argument("--mcore", required=True, type=Path, help=f"checkpoint directory (with {TRACKER})")
    to_hf.add_argument("--hf", required=True, type=Path, help="HF directory to write (output)")
    to_hf.add_argument("--source-hf", type=Path,
                       help="HF checkpoint the config and tokenizer are copied from (default: the copies in --mcore, "
                            "which hf2mcore and training write)")
    to_hf.add_argument("--dtype", choices=DTYPE_CHOICES, help="output precision (default: as stored)")
    to_hf.add_argument("--max-shard-size", type=_size_bytes, default="2GB", help="safetensors shard size, e.g. 2GB")
    to_hf.add_argument("--no-verify", action="store_true",
                       help="export even if the checkpoint's completeness marker or checksums fail (warns)")

    check = sub.add_parser("verify", help="compare logits of the HF and the Megatron-Core model on one batch")
    check.add_argument("--hf", required=True, type=Path)
    check.add_argument("--mcore", required=True, type=Path)
    check.add_argument("--size", help=size_help)
    check.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference allowed (fp32)")


def run(args: argparse.Namespace) -> int:
    from pai_patch.convert import engine
    from pai_patch.convert.verify import family_of, verify
    from pai_patch.models import get_family

    if args.action == "verify":
        parity = verify(args.hf, args.mcore, size_name=args.size, tolerance=args.tolerance)
        verdict = "within" if parity.ok else "NOT within"
        print(f"max abs logit difference {parity.max_abs_diff:.3e}: {verdict} tolerance {parity.tolerance:g}")
        return 0 if parity.ok else 1
    config_dir = args.hf if args.action == "hf2mcore" else args.source_hf or args.mcore
    family = get_family(args.model) if args.model else family_of(config_dir)
    with process_group():
        if args.action == "hf2mcore":
            engine.hf_to_mcore(family, args.size, args.hf, args.mcore, tp=args.tp, pp=args.pp, ep=args.ep,
                               vp=args.vp, pp0_layers=args.pp0_layers, fmt=args.format, dtype=args.dtype,
                               use_te=args.use_te)
            print(f"wrote {args.mcore} ({args.format}, TP={args.tp} PP={args.pp} EP={args.ep}"
                  + (f" VP={args.vp}" if args.vp else "") + (f" PP0={args.pp0_layers}" if args.pp0_layers else "")
                  + ")")
        else:
            engine.mcore_to_hf(family, args.size, args.mcore, args.hf, args.source_hf, dtype=args.dtype,
                               max_shard_bytes=args.max_shard_size, verify=not args.no_verify)
            print(f"wrote {args.hf}")
    return 0


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """A one-process gloo group: megatron-core's torch_dist helpers ask torch.distributed for the rank.

    Megatron's parallel state is not needed, which keeps its heavy imports out of conversion.
    """
    import torch.distributed as dist

    from pai_patch.parallel import init_process_group

    owns = not dist.is_initialized()
    init_process_group()
    try:
        yield
    finally:
        if owns:
            dist.destroy_process_group()
