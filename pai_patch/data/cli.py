"""``python -m pai_patch preprocess pretrain|sft``: corpora and instruction data to Megatron idxmap."""

from __future__ import annotations

import argparse

from pai_patch.cli import CliError
from pai_patch.data.records import MAX_BAD_FRACTION


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer directory, or a seed name (DeepSeekV2Tokenizer, Qwen2Tokenizer, LLamaTokenizer) "
                        "with --tokenizer-dir, or 'shipped'")
    p.add_argument("--tokenizer-dir", default=None, help="directory for a seed tokenizer name")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip bad records and count them by reason instead of stopping at the first one")
    p.add_argument("--max-bad-fraction", type=float, default=MAX_BAD_FRACTION, metavar="F",
                   help="with --skip-bad-lines, stop (writing nothing) when more than this share of the records "
                        f"is bad (default {MAX_BAD_FRACTION:g})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", required=True, metavar="pretrain|sft")
    pre = sub.add_parser("pretrain", help="JSON/JSONL(.gz) corpus (file or folder) to <prefix>_<key>_document.bin/.idx")
    pre.add_argument("--input", required=True, nargs="+", help="JSON/JSONL/.jsonl.gz files or folders of them")
    pre.add_argument("--json-key", "--json-keys", dest="json_key", default="text", help="key holding the document text")
    pre.add_argument("--workers", type=int, default=1, help="tokenizer worker processes")
    pre.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=False,
                     help="end each document with the tokenizer's EOS (as Megatron-LM's --append-eod)")
    pre.add_argument("--split-sentences", nargs="?", const="yes", default="no", choices=("yes", "no"),
                     help="only 'no' is supported: one sequence per document")
    _common(pre)
    sft = sub.add_parser("sft", help="instruction data to idxmap with a loss mask (loss only on responses)")
    sft.add_argument("--input", required=True, help="JSON array or JSONL file")
    sft.add_argument("--format", dest="fmt", default="alpaca", choices=("alpaca", "sharegpt", "messages"))
    sft.add_argument("--seq-length", type=int, required=True, help="training sequence length")
    sft.add_argument("--pack", action="store_true", help="pack several samples per sequence (attention stays within each)")
    sft.add_argument("--seed", type=int, default=1234, help="order in which samples are packed")
    _common(sft)


def run(args: argparse.Namespace) -> int:
    from pai_patch.data.tokenizer import load_tokenizer

    if not 0 <= args.max_bad_fraction <= 1:
        raise CliError(f"--max-bad-fraction {args.max_bad_fraction:g}: expected a fraction between 0 and 1")
    tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_dir)
    if args.kind == "pretrain":
        from pai_patch.data.pretrain import preprocess_pretrain

        if args.split_sentences == "yes":
            raise CliError("--split-sentences yes is not supported (it needs NLTK punkt data, unavailable offline); "
                           "use --split-sentences no")
        if args.workers < 1:
            raise CliError(f"--workers {args.workers}: expected at least 1")
        summary = preprocess_pretrain(args.input, tokenizer, args.output_prefix, json_key=args.json_key,
                                      workers=args.workers, append_eod=args.append_eod,
                                      skip_bad_lines=args.skip_bad_lines, progress=not args.no_progress,
                                      max_bad_fraction=args.max_bad_fraction)
    else:
        from pai_patch.data.sft import preprocess_sft

        if args.seq_length < 2:
            raise CliError(f"--seq-length {args.seq_length}: expected at least 2")
        summary = preprocess_sft(args.input, tokenizer, args.output_prefix, fmt=args.fmt, seq_length=args.seq_length,
                                 pack=args.pack, seed=args.seed, skip_bad_lines=args.skip_bad_lines,
                                 progress=not args.no_progress, max_bad_fraction=args.max_bad_fraction)
    print(summary)
    return 0
