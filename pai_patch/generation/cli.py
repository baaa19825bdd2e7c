"""``python -m pai_patch generate --mcore DIR --family F | --hf DIR --input p.jsonl --output out.jsonl``.

With ``--tp N > 1`` outside a torchrun job the command re-launches itself under
``torchrun --nproc_per_node N`` (gloo on CPU), so the same line works at any TP.
The model and sampling options are shared with ``python -m pai_patch serve`` (:mod:`.server`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from pai_patch.generation.decoders import Decoder
from pai_patch.generation.engine import generate_file
from pai_patch.generation.prompts import read_prompts
from pai_patch.generation.sampling import SamplingParams
from pai_patch.models.base import PRECISIONS, Runtime


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which checkpoint to load and how prompts are encoded."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--mcore", help="Megatron-Core checkpoint directory (needs --family)")
    src.add_argument("--hf", help="HF checkpoint directory")
    parser.add_argument("--family", help="model family of the --mcore checkpoint (qwen2_5, llama2, deepseek_v2)")
    parser.add_argument("--size", help="model size of the --mcore checkpoint (default: the family's default)")
    parser.add_argument("--tokenizer", help="tokenizer directory, or a seed name (Qwen2Tokenizer...) found in --hf/--mcore "
                                            "(default: the one in --hf DIR or the --mcore checkpoint, else the shipped one)")
    parser.add_argument("--precision", choices=PRECISIONS[:3], default="fp32")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    parser.add_argument("--max-prompt-tokens", type=int, help="reject prompts longer than this")
    parser.add_argument("--no-verify", action="store_true",
                        help="load the --mcore checkpoint even if its completeness marker or checksums fail (warns)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, default=1, help="1 = greedy (default); 0 = off")
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling (0 = off); not with --top-k > 0")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help=">= 1.0 (1.0 = off)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                          repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                          seed=args.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help='prompts, one JSON object per line: {"prompt"|"query"|"text": ...}')
    parser.add_argument("--output", required=True, help="output JSON lines: prompt, output text, tokens")
    add_sampling_arguments(parser)
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size for --mcore")


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    prompts = read_prompts(args.input)  # validated before any model is built
    if args.mcore:
        if not args.family:
            raise ValueError("--mcore needs --family (qwen2_5, llama2, deepseek_v2) to build the model")
        if args.tp < 1:
            raise ValueError(f"--tp {args.tp}: expected >= 1")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.tp > 1 and "RANK" not in os.environ:
            return _relaunch(args.tp)
        if world != args.tp:
            raise ValueError(f"--tp {args.tp} but this job has {world} processes; generation uses exactly TP processes")
    with opened_model(args, tp=args.tp) as (decoder, tokenizer):
        rank0 = not args.mcore or torch.distributed.get_rank() == 0
        generate_file(decoder, tokenizer, prompts, args.output, params, chat=args.chat,
                      max_prompt_tokens=args.max_prompt_tokens, write=rank0, agree=_rank0_token)
    if rank0:
        print(f"wrote {len(prompts)} generations to {args.output}")
    return 0


@contextmanager
def opened_model(args: argparse.Namespace, *, tp: int = 1) -> Iterator[tuple[Decoder, Any]]:
    """The decoder and tokenizer for ``--hf`` or ``--mcore`` (this TP rank's shard, inside its process group)."""
    from pai_patch.generation.loading import check_mcore_dir, hf_decoder, load_tokenizer, mcore_decoder

    if args.hf:
        tokenizer = load_tokenizer(args.tokenizer, hf=args.hf)
        yield hf_decoder(args.hf, Runtime(precision=args.precision).params_dtype), tokenizer
        return
    from pai_patch.parallel import model_parallel

    if not args.family:
        raise ValueError("--mcore needs --family (qwen2_5, llama2, deepseek_v2) to build the model")
    check_mcore_dir(args.mcore)
    tokenizer = load_tokenizer(args.tokenizer, mcore=args.mcore, family=args.family)
    rt = Runtime(tp=tp, precision=args.precision)
    with model_parallel(rt):
        yield mcore_decoder(args.mcore, args.family, args.size, rt, verify=not args.no_verify), tokenizer


def _rank0_token(token: int) -> int:
    """Every TP rank continues with rank 0's sample (their RNG streams could drift otherwise)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return token
    t = torch.tensor([token], dtype=torch.long)
    dist.broadcast(t, src=0)
    return int(t.item())


def _relaunch(tp: int) -> int:
    """Run this same command line as a TP-process torchrun job (``python -m pai_patch generate ...``)."""
    if "generate" not in sys.argv:
        raise ValueError(f"--tp {tp}: launch with `torchrun --nproc_per_node {tp} -m pai_patch generate ...`")
    rest = sys.argv[sys.argv.index("generate") + 1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp), "--standalone",
           "-m", "pai_patch", "generate", *rest]
    return subprocess.call(cmd)
