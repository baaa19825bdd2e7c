"""``python -m pai_patch hf_train --model HF_DIR --train-data F [--valid-data F] --output DIR --zero 1|2|3 ...``.

``--nproc N`` (N > 1) outside a launcher re-runs the command under ``torchrun --nproc_per_node N``;
inside ``torchrun`` / ``deepspeed`` jobs it joins the job as is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pai_patch.hf_train.ds_config import DEFAULT_TEMPLATE, ZERO_STAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="HF checkpoint to start from (config.json, weights, tokenizer)")
    parser.add_argument("--train-data", required=True, type=Path, help="JSON / JSON-lines file or folder (text or alpaca records)")
    parser.add_argument("--valid-data", type=Path, help="same formats; validation loss after each epoch")
    parser.add_argument("--output", required=True, type=Path, help="run folder: ds_config.json, train_log.jsonl, hf/")
    parser.add_argument("--zero", type=int, choices=ZERO_STAGES, default=2, help="DeepSpeed ZeRO stage")
    parser.add_argument("--micro-batch", type=int, default=1, help="samples per rank per micro step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--ds-template", type=Path, default=DEFAULT_TEMPLATE, help="DeepSpeed config template")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node")


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "RANK" not in os.environ:
        if "hf_train" not in sys.argv:
            raise ValueError(f"--nproc {args.nproc}: launch with `torchrun --nproc_per_node {args.nproc} -m pai_patch hf_train ...`")
        rest = _without_nproc(sys.argv[sys.argv.index("hf_train") + 1:])
        return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
                                "--standalone", "-m", "pai_patch", "hf_train",
                                *rest])
    from pai_patch.hf_train.trainer import HFTrainConfig, train

    cfg = HFTrainConfig(model=args.model, train_data=args.train_data, valid_data=args.valid_data, output=args.output,
                        zero_stage=args.zero, micro_batch=args.micro_batch, grad_accum=args.grad_accum, lr=args.lr,
                        seq_len=args.seq_len, precision=args.precision,
                        gradient_checkpointing=args.gradient_checkpointing, epochs=args.epochs,
                        max_steps=args.max_steps, seed=args.seed, template=args.ds_template)
    history = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"steps": len(history["train_loss"]), "first_loss": history["train_loss"][0],
                          "last_loss": history["train_loss"][-1], "valid_loss": history["valid_loss"],
                          "hf_dir": history["hf_dir"]}))
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """Drop ``--nproc N``: torchrun would take it for an abbreviation of its own ``--nproc-per-node``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
