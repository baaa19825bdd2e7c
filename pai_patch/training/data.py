"""Training data: megatron-core GPTDataset for pretraining, our SFT datasets, resumable batches.

The batch order is a pure function of (seed, iteration): the micro-batches of global
batch ``i`` are samples ``[i*G, (i+1)*G)``, dealt to data-parallel ranks in the same
micro-batch composition whatever the DP size.  That is what makes a resumed run, and a
run at another layout, see exactly the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Dataset

from pai_patch.data.indexed import dataset_prefix
from pai_patch.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MegatronTokenizerView:
    """The three attributes megatron-core's GPTDataset reads from a tokenizer."""

    eod: int
    pad: int
    vocab_size: int

    @property
    def unique_identifiers(self) -> dict[str, int]:
        """Part of the dataset cache key: a different tokenizer must not reuse cached indices."""
        return {"eod": self.eod, "pad": self.pad, "vocab_size": self.vocab_size}


def _check_prefix(prefix: str, what: str, seq_length: int | None = None) -> None:
    missing = [s for s in (".bin", ".idx") if not Path(prefix + s).is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: {prefix}{missing[0]} not found (expected a Megatron .bin/.idx prefix)")
    from pai_patch.data.indexed import IndexedReader

    # megatron-core asserts (or reads garbage) on a damaged index: check it first, naming the file
    try:
        reader = IndexedReader.open(prefix)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    end = int(reader.sequence_pointers[-1]) + int(reader.sequence_lengths[-1]) * reader.dtype.itemsize if len(reader) else 0
    if end > Path(prefix + ".bin").stat().st_size:
        raise ValueError(f"{what}: {prefix}.bin has {Path(prefix + '.bin').stat().st_size} bytes but {prefix}.idx "
                         f"points to {end}; the .bin is truncated or belongs to another index")
    tokens = int(reader.sequence_lengths.sum())
    if seq_length is not None and tokens < seq_length + 1:
        raise ValueError(f"{what}: {prefix}.bin holds {tokens} tokens in {reader.num_documents} documents, fewer than "
                         f"one training sample needs (seq_length + 1 = {seq_length + 1})")


def build_pretrain_datasets(cfg: TrainConfig, tokenizer, num_samples: tuple[int, int], cache_dir: Path
                            ) -> tuple[Dataset, Dataset | None]:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    train = dataset_prefix(cfg.data.train_path or "")
    valid = dataset_prefix(cfg.data.valid_path or train)
    _check_prefix(train, "data.train_path", cfg.train.seq_length)
    _check_prefix(valid, "data.valid_path", cfg.train.seq_length)
    view = MegatronTokenizerView(
        eod=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        vocab_size=len(tokenizer),
    )
    common = dict(
        random_seed=cfg.train.seed, sequence_length=cfg.train.seq_length, tokenizer=view,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
        path_to_cache=str(cache_dir), mmap_bin_files=True,
    )
    if valid == train:
        ds_cfg = GPTDatasetConfig(blend=([train], None), split=cfg.data.split, **common)
    else:
        ds_cfg = GPTDatasetConfig(blend_per_split=[([train], None), ([valid], None), None], **common)
    train_ds, valid_ds, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [num_samples[0], num_samples[1], 0], lambda: True, ds_cfg
    ).build()
    return train_ds, valid_ds


def build_sft_datasets(cfg: TrainConfig, tokenizer) -> tuple[Dataset, Dataset | None]:
    from pai_patch.data.sft import build_sft_dataset

    raw = cfg.data.type == "raw"
    seq = cfg.seq_length

    def one(path: str | None) -> Dataset | None:
        if path is None:
            return None
        return build_sft_dataset(path if raw else dataset_prefix(path), tokenizer, seq, raw=raw,
                                 pack=cfg.data.pack, seed=cfg.train.seed)

    if cfg.data.train_path is None:
        raise ValueError("data.train_path: an SFT run needs training data")
    return one(cfg.data.train_path), one(cfg.data.valid_path)


SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def batch_on_this_cp_rank(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This context-parallel rank's part of a micro-batch (the whole batch at CP=1).

    Every CP rank reads the same micro-batch (they share a data-parallel rank) and keeps
    chunks r and 2*CP-1-r of its 2*CP sequence chunks, megatron's load-balanced layout,
    which the rotary embedding and ``SDPACoreAttention`` assume.  A packed batch's
    ``cu_seqlens`` stays whole: its offsets are global positions, read by the attention mask.
    """
    from megatron.core.utils import get_batch_on_this_cp_rank

    return {**batch, **get_batch_on_this_cp_rank({key: batch[key] for key in SEQUENCE_KEYS})}


def micro_batches(dataset: Dataset, *, start_iteration: int, global_batch: int, micro_batch: int,
                  dp_size: int, dp_rank: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches for this DP rank, starting at ``start_iteration``.

    Sample ``k`` of the run is ``dataset[perm_e[k % n]]`` for epoch ``e = k // n`` (a seeded
    permutation per epoch), so any iteration's data is known without replaying the run.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("the training dataset is empty")
    per_rank_micro = global_batch // (micro_batch * dp_size)
    perms: dict[int, torch.Tensor] = {}

    def sample(k: int) -> dict[str, torch.Tensor]:
        epoch = k // n
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed + epoch)
            perms.clear()
            perms[epoch] = torch.randperm(n, generator=gen)
        return dataset[int(perms[epoch][k % n])]

    iteration = start_iteration
    while True:
        base = iteration * global_batch
        for m in range(per_rank_micro):
            first = base + m * micro_batch * dp_size + dp_rank * micro_batch
            items = [sample(first + j) for j in range(micro_batch)]
            yield {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
        iteration += 1
