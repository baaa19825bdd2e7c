"""``python -m pai_patch eval --hf DIR --tasks pai_tiny_mc,cmmlu,ceval-valid [--data-dir DIR]``."""

from __future__ import annotations

import argparse
import json

from pai_patch.evaluation.runner import DEFAULT_TASKS, evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, help="HF checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help="comma-separated lm-eval tasks: pai_tiny_mc (shipped), cmmlu, ceval-valid, "
                             "one subject (cmmlu_agronomy), or any lm-eval task cached locally")
    parser.add_argument("--data-dir", help="folder with the extracted cmmlu.tgz / ceval.tgz (cmmlu/, ceval/)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N documents of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--apply-chat-template", action="store_true",
                        help="wrap each question in the tokenizer's chat template (chat-tuned models)")
    parser.add_argument("--output", help="write the scores and lm-eval's results here (JSON)")


def run(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks!r}: expected at least one task name")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: expected a positive number of documents")
    scores = evaluate(args.hf, tasks, data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size,
                      output=args.output, apply_chat_template=args.apply_chat_template,
                      num_fewshot=args.num_fewshot)
    print(json.dumps(scores, indent=1))
    return 0
