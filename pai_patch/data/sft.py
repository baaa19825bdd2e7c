"""SFT data: ``preprocess sft`` (records → idxmap + loss-mask idxmap) and the datasets the trainer reads.

On disk, ``<prefix>_text_document`` holds one sequence per sample (uint16 when the vocabulary
allows) and ``<prefix>_loss_mask_document`` the matching 0/1 mask as uint8; a document is one
sample, or with ``--pack`` one packed training sequence.  The mask lives in its own idxmap
because the original's trick of marking prompt tokens with negative ids cannot be stored in
an unsigned dtype.  ``<prefix>_sft.json`` records how the files were built.

A sample of L tokens fills L-1 training positions (inputs ``t[:-1]``, labels ``t[1:]``), so a
packed sequence never predicts across two samples; samples are truncated to ``seq_length + 1``
tokens.  Packing is next-fit over the samples in an order shuffled with ``seed``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from pai_patch.data.indexed import IndexedReader, atomic_writers, optimal_dtype
from pai_patch.data.records import MAX_BAD_FRACTION, BadRecord, check_bad_fraction, find_inputs, iter_chunks
from pai_patch.data.sft_format import SftEncoder, to_messages
from pai_patch.data.sidecar import remove_sidecar, tokenizer_identity, write_sidecar
from pai_patch.data.tokenizer import vocab_size
from pai_patch.utils import write_text_atomic

TOKENS_SUFFIX, MASK_SUFFIX, META_SUFFIX = "_text_document", "_loss_mask_document", "_sft.json"


@dataclass
class Summary:
    """What ``preprocess_sft`` wrote: samples, training sequences, tokens, loss tokens, truncations, skips."""

    output_prefix: str
    template: str = ""
    samples: int = 0
    sequences: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.output_prefix}{TOKENS_SUFFIX} (+{MASK_SUFFIX}): {self.samples} samples in {self.sequences} "
                f"sequences, {self.tokens} tokens ({self.loss_tokens} with loss), {self.truncated} truncated, "
                f"template: {self.template}, {self.seconds:.1f}s; skipped: {skipped}")


def read_conversations(path: str | os.PathLike, fmt: str, skip_bad_lines: bool = False,
                       skipped: dict[str, int] | None = None) -> list[list[dict[str, str]]]:
    """All conversations of an alpaca/sharegpt/messages JSON or JSONL file, validated, with file:line errors."""
    conversations = []
    for file in find_inputs(path):
        for chunk in iter_chunks(file):
            for line, payload in zip(chunk.lines, chunk.payloads):
                if not payload.strip():
                    continue
                try:
                    try:
                        record = json.loads(payload)
                    except json.JSONDecodeError as err:
                        raise BadRecord(chunk.path, line, "malformed JSON", str(err)) from None
                    conversations.append(to_messages(record, fmt, chunk.path, line))
                except BadRecord as err:
                    if not skip_bad_lines:
                        raise
                    if skipped is not None:
                        skipped[err.reason] = skipped.get(err.reason, 0) + 1
    return conversations


def pack_groups(lengths: np.ndarray, seq_length: int, seed: int) -> list[np.ndarray]:
    """Next-fit packing: sample indices per training sequence, each group using at most ``seq_length`` positions.

    ``lengths`` are sample token counts (already at most ``seq_length + 1``); a sample uses
    ``length - 1`` positions.
    """
    order = np.random.default_rng(seed).permutation(len(lengths))
    groups, current, used = [], [], 0
    for i in order:
        need = int(lengths[i]) - 1
        if current and used + need > seq_length:
            groups.append(np.array(current))
            current, used = [], 0
        current.append(int(i))
        used += need
    if current:
        groups.append(np.array(current))
    return groups


def preprocess_sft(input, tokenizer, output_prefix: str | os.PathLike, *, fmt: str = "alpaca", seq_length: int,
                   pack: bool = False, seed: int = 1234, skip_bad_lines: bool = False, progress: bool = True,
                   max_bad_fraction: float = MAX_BAD_FRACTION) -> Summary:
    """Tokenize instruction data into ``<output_prefix>_text_document`` + ``_loss_mask_document`` (+ ``_sft.json``,
    and the tokenizer sidecar ``_text_document.tokenizer.json``); stops as ``preprocess_pretrain`` does when more
    than ``max_bad_fraction`` of the records were skipped."""
    start = time.perf_counter()
    encoder = SftEncoder(tokenizer)
    summary = Summary(str(output_prefix), template=encoder.template_name)
    conversations = read_conversations(input, fmt, skip_bad_lines, summary.skipped)
    check_bad_fraction(summary.skipped, len(conversations), max_bad_fraction)
    samples: list[tuple[np.ndarray, np.ndarray]] = []
    for messages in tqdm(conversations, desc="sft", unit="sample", disable=not progress, mininterval=1.0):
        tokens, mask = encoder.encode(messages)
        summary.truncated += len(tokens) > seq_length + 1
        samples.append((tokens[:seq_length + 1], mask[:seq_length + 1]))
    lengths = np.array([len(t) for t, _ in samples], np.int64)
    groups = pack_groups(lengths, seq_length, seed) if pack else [np.array([i]) for i in range(len(samples))]
    dtype = optimal_dtype(vocab_size(tokenizer))
    specs = {"tokens": (f"{output_prefix}{TOKENS_SUFFIX}", dtype), "mask": (f"{output_prefix}{MASK_SUFFIX}", np.uint8)}
    remove_sidecar(specs["tokens"][0])
    with atomic_writers(specs) as writers:
        for group in groups:
            group_lengths = lengths[group]
            writers["tokens"].add_document(np.concatenate([samples[i][0] for i in group]), group_lengths)
            writers["mask"].add_document(np.concatenate([samples[i][1] for i in group]), group_lengths)
    summary.samples, summary.sequences = len(samples), len(groups)
    summary.tokens = int(lengths.sum())
    summary.loss_tokens = int(sum(int(m.sum()) for _, m in samples))
    meta = {"format": fmt, "seq_length": seq_length, "packed": pack, "seed": seed, "samples": len(samples),
            "template": encoder.template_name, "vocab_size": vocab_size(tokenizer)}
    write_text_atomic(f"{output_prefix}{META_SUFFIX}", json.dumps(meta, indent=1) + "\n")
    max_token_id = max((int(t.max()) for t, _ in samples if len(t)), default=-1)
    write_sidecar(specs["tokens"][0], tokenizer_identity(tokenizer), max_token_id)
    summary.seconds = time.perf_counter() - start
    return summary


class SftDataset(torch.utils.data.Dataset):
    """Items of exactly ``seq_length`` positions built from groups of samples (one group per item)."""

    def __init__(self, sample: Callable[[int], tuple[np.ndarray, np.ndarray]], groups: list[np.ndarray],
                 seq_length: int, pad_id: int, packed: bool) -> None:
        self.sample, self.groups, self.seq_length, self.pad_id, self.packed = sample, groups, seq_length, pad_id, packed

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.seq_length
        tokens, labels = np.full(s, self.pad_id, np.int64), np.full(s, self.pad_id, np.int64)
        loss_mask, position_ids = np.zeros(s, np.float32), np.zeros(s, np.int64)
        cu_seqlens, pos = [0], 0
        for i in self.groups[index]:
            ids, mask = self.sample(int(i))
            ids, mask = ids[:s + 1], mask[:s + 1]
            n = len(ids) - 1
            tokens[pos:pos + n], labels[pos:pos + n] = ids[:-1], ids[1:]
            loss_mask[pos:pos + n] = mask[1:]
            position_ids[pos:pos + n] = np.arange(n)
            pos += n
            cu_seqlens.append(pos)
        # Padding continues the last sample's positions (so an unpacked item has arange(S)).
        first = int(position_ids[pos - 1]) + 1 if pos else 0
        position_ids[pos:] = np.arange(first, first + s - pos)
        item = {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
                "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids)}
        if self.packed:
            cu = np.full(s + 1, pos, np.int32)
            cu[:len(cu_seqlens)] = cu_seqlens
            item["cu_seqlens"] = torch.from_numpy(cu)
        return item


def sft_prefix(path: str) -> str:
    """The prefix ``preprocess sft`` was given, from it or one of its idxmap prefixes."""
    for suffix in (TOKENS_SUFFIX, MASK_SUFFIX):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def build_sft_dataset(path: str, tokenizer, seq_length: int, *, raw: bool = False, pack: bool = False,
                      seed: int = 1234, fmt: str = "alpaca") -> torch.utils.data.Dataset:
    """The SFT dataset for the trainer, from an idxmap prefix written by ``preprocess sft`` or (``raw``) a JSON file.

    A prefix preprocessed with ``--pack`` for the same ``seq_length`` keeps its stored packing
    (``seed`` is then unused); otherwise packing is computed here with ``seed``, as ``preprocess
    sft --pack`` does, so both paths give the same items.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if raw:
        encoder = SftEncoder(tokenizer)
        conversations = read_conversations(path, fmt)

        def sample(i: int) -> tuple[np.ndarray, np.ndarray]:
            return encoder.encode(conversations[i])

        if pack:
            lengths = np.array([min(len(sample(i)[0]), seq_length + 1) for i in range(len(conversations))])
            return SftDataset(sample, pack_groups(lengths, seq_length, seed), seq_length, pad_id, True)
        return SftDataset(sample, [np.array([i]) for i in range(len(conversations))], seq_length, pad_id, False)

    prefix = sft_prefix(str(path))
    meta_path = Path(f"{prefix}{META_SUFFIX}")
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: missing; {prefix} was not written by `preprocess sft`")
    meta = json.loads(meta_path.read_text())
    if seq_length > meta["seq_length"]:
        raise ValueError(f"{prefix}: preprocessed with --seq-length {meta['seq_length']} (samples truncated to "
                         f"{meta['seq_length'] + 1} tokens), asked for {seq_length}; rerun preprocess sft")
    tokens, masks = IndexedReader.open(prefix + TOKENS_SUFFIX), IndexedReader.open(prefix + MASK_SUFFIX)
    if len(tokens) != len(masks) or not np.array_equal(tokens.sequence_lengths, masks.sequence_lengths):
        raise ValueError(f"{prefix}: {TOKENS_SUFFIX} and {MASK_SUFFIX} disagree on sample lengths")

    def stored(i: int) -> tuple[np.ndarray, np.ndarray]:
        return tokens.sequence(i).astype(np.int64), masks.sequence(i)

    if pack and meta["packed"] and seq_length == meta["seq_length"]:
        docs = tokens.document_indices
        groups = [np.arange(docs[d], docs[d + 1]) for d in range(tokens.num_documents)]
    elif pack:
        groups = pack_groups(np.minimum(tokens.sequence_lengths, seq_length + 1), seq_length, seed)
    else:
        groups = [np.array([i]) for i in range(len(tokens))]
    return SftDataset(stored, groups, seq_length, pad_id, pack)
