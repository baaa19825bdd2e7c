"""The sampling loop and the prompts-file → outputs-file run shared by both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from pai_patch.generation.decoders import Decoder
from pai_patch.generation.sampling import SamplingParams, choose_token
from pai_patch.utils import atomic_path


def generate_ids(decoder: Decoder, prompt_ids: list[int], params: SamplingParams, *, stop_ids: set[int],
                 generator: torch.Generator | None = None,
                 agree: Callable[[int], int] = lambda token: token) -> list[int]:
    """New tokens for one prompt; stops after ``max_new_tokens`` or a stop token (which is kept).

    ``agree`` makes all tensor-parallel ranks continue with the same token (rank 0's).
    """
    return list(iterate_ids(decoder, prompt_ids, params, stop_ids=stop_ids, generator=generator, agree=agree))


def iterate_ids(decoder: Decoder, prompt_ids: list[int], params: SamplingParams, *, stop_ids: set[int],
                generator: torch.Generator | None = None,
                agree: Callable[[int], int] = lambda token: token) -> Iterator[int]:
    """:func:`generate_ids` one token at a time, so a server can stream text before the output is complete."""
    if not prompt_ids:
        raise ValueError("empty prompt after tokenization")
    logits = decoder.start(prompt_ids, len(prompt_ids) + params.max_new_tokens)
    seen = list(prompt_ids)
    for count in range(1, params.max_new_tokens + 1):
        token = agree(choose_token(logits, seen, params, generator))
        seen.append(token)
        yield token
        if token in stop_ids or count == params.max_new_tokens:
            break
        logits = decoder.step(token)


def stop_token_ids(tokenizer: Any) -> set[int]:
    """EOS plus the chat end-of-turn token when the tokenizer has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


def decode_output(tokenizer: Any, new: list[int], stops: set[int]) -> str:
    """The text of generated tokens, without stop and special tokens (the streamed text must equal it)."""
    return tokenizer.decode([t for t in new if t not in stops], skip_special_tokens=True)


def encode_prompt(tokenizer: Any, text: str, *, chat: bool) -> list[int]:
    if chat:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_file(decoder: Decoder, tokenizer: Any, prompts: list[str], output: str | Path, params: SamplingParams,
                  *, chat: bool = False, max_prompt_tokens: int | None = None, write: bool = True,
                  agree: Callable[[int], int] = lambda token: token) -> list[dict[str, Any]]:
    """Generate for every prompt, then write ``output`` (JSON lines) in one atomic rename."""
    encoded = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    if max_prompt_tokens is not None:
        for number, ids in enumerate(encoded, start=1):
            if len(ids) > max_prompt_tokens:
                raise ValueError(f"prompt {number} has {len(ids)} tokens, more than --max-prompt-tokens "
                                 f"{max_prompt_tokens}")
    generator = torch.Generator().manual_seed(params.seed)
    stops = stop_token_ids(tokenizer)
    rows = []
    # one progress bar: only the rank that writes (under TP every rank runs this loop)
    for prompt, ids in tqdm(list(zip(prompts, encoded)), desc="generate", unit="prompt", disable=not write):
        new = generate_ids(decoder, ids, params, stop_ids=stops, generator=generator, agree=agree)
        rows.append({"prompt": prompt, "output": decode_output(tokenizer, new, stops), "tokens": new})
    if write:
        with atomic_path(output) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows
