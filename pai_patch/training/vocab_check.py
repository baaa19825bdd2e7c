"""Tokenizer, data and model vocabulary agree — checked before the model is built.

A tokenizer with more ids than the model's embedding rows, or data tokenized with another
tokenizer than the one the job names, does not fail where it is wrong: it trains on
garbage, or dies with an index error deep inside the embedding after the model was built.
Each check here stops the run first with one line naming the file, the numbers and the fix:

* the tokenizer's ids fit the model's (padded) vocabulary;
* a dataset with a tokenizer sidecar (``pai_patch.data.sidecar``) was made by a tokenizer
  with the same fingerprint as ``data.tokenizer``;
* a dataset without one (made by Megatron-LM's tools) holds no id the tokenizer cannot
  produce: a chunked scan of its ``.bin`` for the largest id.
"""

from __future__ import annotations

import logging

import numpy as np

from pai_patch.cli import CliError
from pai_patch.data.indexed import IndexedReader, bin_path, dataset_prefix
from pai_patch.data.sidecar import TokenizerIdentity, read_sidecar, sidecar_path, tokenizer_identity
from pai_patch.models.base import ModelSize, padded_vocab_size
from pai_patch.training.config import TrainConfig

log = logging.getLogger(__name__)

SCAN_CHUNK = 1 << 24  # tokens per read
SCAN_BUDGET = 1 << 30  # bytes; a larger .bin is sampled in evenly spaced chunks


class VocabularyError(ValueError, CliError):
    """The tokenizer, the data and the model disagree about token ids (one-line CLI error)."""


def largest_token_id(data: np.ndarray, budget_bytes: int = SCAN_BUDGET) -> tuple[int, bool]:
    """The largest id in ``data`` (a memmap) and whether all of it was read: up to
    ``budget_bytes`` it is read whole, beyond that in evenly spaced chunks adding up to the budget."""
    chunks = -(-len(data) // SCAN_CHUNK)
    wanted = max(1, budget_bytes // (SCAN_CHUNK * data.dtype.itemsize))
    picked = range(chunks) if chunks <= wanted else np.linspace(0, chunks - 1, wanted).astype(int)
    found = max((int(data[i * SCAN_CHUNK:(i + 1) * SCAN_CHUNK].max()) for i in picked), default=-1)
    return found, chunks <= wanted


def _token_prefix(path: str, sft: bool) -> str:
    """The idxmap prefix holding the token ids of a configured data path."""
    from pai_patch.data.sft import TOKENS_SUFFIX, sft_prefix

    prefix = dataset_prefix(path)
    return sft_prefix(prefix) + TOKENS_SUFFIX if sft else prefix


def _check_dataset(what: str, prefix: str, tokenizer: TokenizerIdentity) -> None:
    try:
        reader = IndexedReader.open(prefix)
    except (OSError, ValueError):
        return  # missing or damaged: the dataset builder reports it, naming the file
    sidecar = read_sidecar(prefix)
    if sidecar is not None:
        if sidecar.tokenizer.fingerprint != tokenizer.fingerprint:
            raise VocabularyError(
                f"{what}: {prefix} was tokenized with {sidecar.tokenizer.describe()} ({sidecar_path(prefix)}), but "
                f"data.tokenizer is {tokenizer.describe()}; train with the tokenizer the data was made with, or "
                "preprocess the data again with this one")
        return
    found, whole = largest_token_id(reader.data)
    log.info("%s: no %s; largest token id %d (%s)", prefix, sidecar_path(prefix).name, found,
             "whole .bin scanned" if whole else "sampled")
    if found >= tokenizer.vocab_size:
        raise VocabularyError(
            f"{what}: {bin_path(prefix)} holds token id {found}, but data.tokenizer {tokenizer.describe()} has ids "
            f"0..{tokenizer.vocab_size - 1} only; the data was tokenized with another tokenizer")


def check_vocabulary(cfg: TrainConfig, size: ModelSize, loaded_tokenizer) -> None:  # noqa: ANN001 - HF tokenizer
    """Raise VocabularyError when ``loaded_tokenizer`` (the job's ``data.tokenizer``), the datasets and the
    model disagree (see module doc)."""
    tokenizer = tokenizer_identity(loaded_tokenizer, name=cfg.data.tokenizer)
    rows = padded_vocab_size(size.vocab_size)
    if tokenizer.vocab_size > rows:
        raise VocabularyError(
            f"data.tokenizer: {tokenizer.describe()} has more ids than model {cfg.model.family} {size.name} has "
            f"embedding rows ({rows}: vocab_size {size.vocab_size} padded to a multiple of 128); use the "
            "tokenizer of this model")
    if cfg.data.type == "raw":
        return  # tokenized on the fly with this tokenizer
    for what, path in (("data.train_path", cfg.data.train_path), ("data.valid_path", cfg.data.valid_path)):
        if path:
            _check_dataset(what, _token_prefix(path, cfg.data.sft), tokenizer)
