"""The DeepSpeed training loop for an HF causal LM: epochs, ZeRO 1/2/3, validation, HF save.

Runs inside a torchrun (or ``deepspeed``) job, or as a single process that forms its own
one-rank group (gloo on CPU), which is how the tests exercise DeepSpeed's CPU accelerator.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pai_patch.hf_train import data, ds_config
from pai_patch.launcher import exit_with_launcher
from pai_patch.utils import atomic_path

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja")


@dataclass(frozen=True)
class HFTrainConfig:
    model: Path
    train_data: Path
    output: Path
    valid_data: Path | None = None
    zero_stage: int = 2
    micro_batch: int = 1
    grad_accum: int = 1
    lr: float = 1e-5
    seq_len: int = 2048
    precision: str = "bf16"
    gradient_checkpointing: bool = False
    epochs: int = 1
    max_steps: int | None = None
    warmup_ratio: float = 0.03
    seed: int = 1234
    template: Path = ds_config.DEFAULT_TEMPLATE


def init_distributed() -> None:
    """Join the launcher's job, or start a one-process group so DeepSpeed runs without a launcher."""
    import deepspeed

    exit_with_launcher()
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def ops_to_compile(config: dict[str, Any]) -> list[str]:
    """The DeepSpeed ops this config makes it JIT-compile: its Adam kernel, unless prebuilt or built before.

    DeepSpeed builds the op inside ``deepspeed.initialize`` without a word, so a first run looks hung
    for minutes; the caller says so first.
    """
    from deepspeed.git_version_info import installed_ops

    optimizer = config.get("optimizer") or {}
    if str(optimizer.get("type", "")).lower() not in ("adam", "adamw") or (optimizer.get("params") or {}).get("torch_adam"):
        return []
    offload = ((config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")
    name = "cpu_adam" if offload in ("cpu", "nvme") else "fused_adam"
    return [] if installed_ops.get(name) or _jit_built(name) else [name]


def _jit_built(name: str) -> bool:
    """Whether torch's extension cache (where DeepSpeed JIT-builds) already holds the op."""
    from torch.utils.cpp_extension import _get_build_directory

    return any(Path(_get_build_directory(name, verbose=False)).glob(f"{name}*.so"))


def encoded(path: Path, tokenizer: Any, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Tokenized examples; ones whose answer is cut off entirely by ``seq_len`` carry no loss and are dropped."""
    rows = [data.encode(ex, tokenizer, seq_len) for ex in data.load_examples(path)]
    kept = [r for r in rows if any(label != data.IGNORE for label in r[1])]
    if not kept:
        raise ValueError(f"{path}: every record's answer lies beyond --seq-len {seq_len}")
    if len(kept) < len(rows):
        log.warning("%s: %d records dropped (prompt longer than --seq-len %d)", path, len(rows) - len(kept), seq_len)
    return kept


def loader(rows: list, cfg: HFTrainConfig, pad_id: int, *, shuffle: bool) -> torch.utils.data.DataLoader:
    import torch.distributed as dist

    sampler = torch.utils.data.DistributedSampler(rows, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                                  shuffle=shuffle, seed=cfg.seed)
    return torch.utils.data.DataLoader(rows, batch_size=cfg.micro_batch, sampler=sampler,
                                       collate_fn=lambda b: data.collate(b, pad_id))


def train(cfg: HFTrainConfig) -> dict[str, Any]:
    """Train; returns ``{"train_loss": [per optimizer step], "valid_loss": [per epoch], "hf_dir": ...}``."""
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (cfg.model / "config.json").is_file():
        raise FileNotFoundError(f"{cfg.model}: no config.json — expected an HF checkpoint to start from")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs {cfg.epochs}: expected >= 1")
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_rows = encoded(cfg.train_data, tokenizer, cfg.seq_len)
    valid_rows = encoded(cfg.valid_data, tokenizer, cfg.seq_len) if cfg.valid_data else []

    init_distributed()
    torch.manual_seed(cfg.seed)
    world = dist.get_world_size()
    micro_per_epoch = math.ceil(math.ceil(len(train_rows) / world) / cfg.micro_batch)  # DistributedSampler pads
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    values = ds_config.template_values(
        zero_stage=cfg.zero_stage, micro_batch=cfg.micro_batch, grad_accum=cfg.grad_accum, lr=cfg.lr,
        precision=cfg.precision, warmup_steps=int(cfg.warmup_ratio * total), total_steps=total,
        torch_adam=not torch.cuda.is_available())
    config = ds_config.render(cfg.template, values)

    model = AutoModelForCausalLM.from_pretrained(str(cfg.model), dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable()  # transformers 5 name of gradient_checkpointing_enable
        model.config.use_cache = False
    rank0 = dist.get_rank() == 0
    for op in ops_to_compile(config) if rank0 else ():
        log.warning("compiling DeepSpeed's %s op (first run only; this takes a few minutes)", op)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    if rank0:
        cfg.output.mkdir(parents=True, exist_ok=True)
        (cfg.output / "ds_config.json").write_text(json.dumps(config, indent=1))
        (cfg.output / "train_log.jsonl").write_text("")
    history: dict[str, Any] = {"train_loss": [], "valid_loss": []}
    train_loader = loader(train_rows, cfg, pad_id, shuffle=True)
    step, pending = 0, []
    with tqdm(total=total, desc="hf_train", unit="step", disable=not rank0) as bar:
        for epoch in range(cfg.epochs):
            train_loader.sampler.set_epoch(epoch)
            engine.train()
            for batch in train_loader:
                loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
                engine.backward(loss)
                engine.step()
                pending.append(loss.item())  # rank 0's micro-batch losses, averaged per optimizer step
                if len(pending) == cfg.grad_accum:
                    step += 1
                    history["train_loss"].append(sum(pending) / len(pending))
                    _log(cfg, rank0, {"step": step, "epoch": epoch, "loss": history["train_loss"][-1],
                                      "lr": engine.get_lr()[0]})
                    pending = []
                    bar.update(1)
                    bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}")
                    if step >= total:
                        break
            if valid_rows:
                history["valid_loss"].append(validate(engine, loader(valid_rows, cfg, pad_id, shuffle=False)))
                _log(cfg, rank0, {"step": step, "epoch": epoch, "valid_loss": history["valid_loss"][-1]})
            if step >= total:
                break
    history["hf_dir"] = str(save_hf(engine, model, cfg, rank0))
    return history


@torch.no_grad()
def validate(engine: Any, valid_loader: torch.utils.data.DataLoader) -> float:
    """Token-weighted mean loss over the validation set, reduced over data-parallel ranks."""
    import torch.distributed as dist

    engine.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    for batch in valid_loader:
        tokens = int((batch["labels"][:, 1:] != data.IGNORE).sum())
        loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
        totals += torch.tensor([loss.item() * tokens, tokens], dtype=torch.float64)
    dist.all_reduce(totals)
    engine.train()
    return float(totals[0] / max(totals[1], 1))


def save_hf(engine: Any, model: torch.nn.Module, cfg: HFTrainConfig, rank0: bool) -> Path:
    """The trained weights as an HF checkpoint (``OUTPUT/hf``), tokenizer included, renamed into place.

    Under ZeRO-3 every rank must take part in gathering the partitioned parameters.
    """
    state = engine._zero3_consolidated_16bit_state_dict() if cfg.zero_stage == 3 else None
    final = cfg.output / "hf"
    if rank0:
        with atomic_path(final, is_dir=True) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            for name in TOKENIZER_FILES:
                if (cfg.model / name).is_file():
                    shutil.copy(cfg.model / name, tmp / name)
    import torch.distributed as dist

    dist.barrier()
    return final


def _log(cfg: HFTrainConfig, rank0: bool, record: dict[str, Any]) -> None:
    if rank0:
        with open(cfg.output / "train_log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
