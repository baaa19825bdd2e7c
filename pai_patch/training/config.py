"""The training job: what `python -m pai_patch train` runs, as typed sections.

A recipe stage (pretrain / sft) resolves into one of these; a job can also be given
directly as YAML.  Derived numbers (iterations from tokens, DP size) are computed
here once, with ceiling division so a short token budget never becomes zero steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pai_patch.configio import ConfigError
from pai_patch.models.base import PRECISIONS, RECOMPUTE_MODES, Runtime


@dataclass
class ModelSection:
    family: str = "qwen2_5"
    size: str = "tiny"


@dataclass
class ParallelSection:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int | None = None
    vp: int | None = None
    pp0_layers: int | None = None
    sequence_parallel: bool = False
    distributed_optimizer: bool = False


@dataclass
class OptimSection:
    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    #: seeds' OPTIMIZER_OFFLOAD: keep optimizer states on the host (static), decide by memory (auto), or
    #: offload this fraction 0-1 of them (run_mcore_qwen3.sh's form)
    offload: Literal["false", "static", "auto"] | float = "false"

    def validate(self) -> None:
        """What megatron-core's scheduler and torch's Adam assert on, refused here with the key named.

        Found at training start, these are an ``AssertionError`` with no message inside
        ``OptimizerParamScheduler`` on every rank, after the model is built; ``lr`` below the recipe's
        ``min_lr`` is an ordinary fine-tuning override.
        """
        for name in ("lr", "min_lr", "weight_decay", "eps", "clip_grad"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"optim.{name}: expected a finite number >= 0, got {value:g}")
        if self.lr < self.min_lr:
            raise ConfigError(f"optim.lr ({self.lr:g}) is below optim.min_lr ({self.min_lr:g}); the schedule decays "
                              "lr down to min_lr, so set optim.min_lr at most lr")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"optim.{name}: expected 0 <= {name} < 1, got {value:g}")
        if isinstance(self.offload, float) and not 0.0 <= self.offload <= 1.0:
            raise ConfigError(f"optim.offload: a fraction of the optimizer state must be within 0 and 1, "
                              f"got {self.offload}")


@dataclass
class TrainSection:
    micro_batch_size: int = 2
    global_batch_size: int = 8
    seq_length: int = 128
    train_iters: int | None = None
    train_tokens: int | None = None
    warmup_iters: int | None = None
    warmup_tokens: int | None = None
    precision: str = "fp32"
    recompute: str = "false"
    recompute_layers: int = 1
    flash_attn: bool = True
    seed: int = 1234
    log_interval: int = 1
    eval_interval: int | None = None
    eval_iters: int = 2
    exit_duration_minutes: float | None = None
    #: save and stop once the iteration is a multiple of this (Megatron-LM's --exit-interval)
    exit_interval: int | None = None
    #: how many non-finite losses to skip (batch dropped) before stopping the run
    nan_skip_budget: int = 0

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.recompute not in RECOMPUTE_MODES:
            raise ConfigError(f"train.recompute: {self.recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}")
        if (self.train_iters is None) == (self.train_tokens is None):
            raise ConfigError("train: give exactly one of train_iters or train_tokens")
        if self.warmup_iters is not None and self.warmup_tokens is not None:
            raise ConfigError("train: give at most one of warmup_iters or warmup_tokens")
        for name in ("micro_batch_size", "global_batch_size", "seq_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1")
        if self.warmup >= self.iterations:
            raise ConfigError(f"train: warmup ({self.warmup} iterations) must be shorter than training "
                              f"({self.iterations} iterations)")

    @property
    def tokens_per_iter(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def iterations(self) -> int:
        if self.train_iters is not None:
            return self.train_iters
        return max(1, math.ceil(self.train_tokens / self.tokens_per_iter))

    @property
    def warmup(self) -> int:
        if self.warmup_iters is not None:
            return self.warmup_iters
        if self.warmup_tokens is not None:
            return math.ceil(self.warmup_tokens / self.tokens_per_iter)
        return 0


@dataclass
class DataSection:
    train_path: str | None = None
    valid_path: str | None = None
    #: a directory, ``shipped``, or a seed class name (``Qwen2Tokenizer``...) whose files are looked for
    #: in ``hf``, then in ``checkpoint.load`` (where ``convert hf2mcore`` and training copy them)
    tokenizer: str = "shipped"
    #: the HF checkpoint the run started from (the recipe's ``hf=``), if any
    hf: str | None = None
    #: mmap: Megatron .bin/.idx; raw: alpaca JSON tokenized on the fly (seeds' MP_DATASET_TYPE=raw)
    type: Literal["mmap", "raw"] = "mmap"
    sft: bool = False
    pack: bool = False
    #: SFT samples are padded to this many tokens (seeds' PAD_LEN); default: seq_length
    pad_length: int | None = None
    split: str = "98,2,0"


@dataclass
class CheckpointSection:
    #: weights to start from (a converted HF checkpoint or an earlier run's save dir)
    load: str | None = None
    save: str | None = None
    save_interval: int | None = None
    keep_last: int | None = None
    #: start from `load`'s weights only (fresh optimizer, iteration 0), as fine-tuning does
    finetune: bool = True
    #: how the distributed optimizer's state is saved. ``dp_reshardable`` (Megatron-LM's default) writes each
    #: rank's shard as it is: no gather, no extra memory, and a resume may change DP (and CP) but not TP/PP/EP.
    #: ``fully_reshardable`` gathers the state into model-shaped tensors on every DP rank while saving (host
    #: memory about 3x the fp32 model, ~9x measured on CPU): resumable at any layout.
    optimizer_format: Literal["dp_reshardable", "fully_reshardable"] = "dp_reshardable"
    #: check the completeness marker and CRC-32s of what is resumed or loaded (`load`); false reads it
    #: unchecked, with a warning (a damaged checkpoint then loads wrong)
    verify: bool = True


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=lambda: TrainSection(train_iters=10))
    data: DataSection = field(default_factory=DataSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    output_dir: str = "output/run"

    def runtime(self, *, use_te: bool = False, attention_backend: str = "auto") -> Runtime:
        p, t = self.parallel, self.train
        seq = self.data.pad_length if self.data.sft and self.data.pad_length else t.seq_length
        return Runtime(
            tp=p.tp, pp=p.pp, cp=p.cp, ep=p.ep, etp=p.etp, vp=p.vp, pp0_layers=p.pp0_layers,
            sequence_parallel=p.sequence_parallel, precision=t.precision, recompute=t.recompute,
            recompute_layers=t.recompute_layers, use_te=use_te, flash_attn=t.flash_attn,
            attention_backend=attention_backend, seq_length=seq,
        )

    @property
    def seq_length(self) -> int:
        return self.runtime().seq_length

    def tokenizer_dir(self) -> Path:
        """Where ``data.tokenizer`` loads from: checked by the recipe stage before launching, used by the trainer."""
        from pai_patch.data.tokenizer import find_tokenizer

        return find_tokenizer(self.data.tokenizer, hf=self.data.hf, checkpoint=self.checkpoint.load,
                              family=self.model.family)
