"""Megatron's legacy checkpoint layout: one ``torch.save`` file per model-parallel rank.

The tracker file names the iteration (:mod:`pai_patch.checkpoint_dir`), and
``<dir>/iter_XXXXXXX/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`` holds ``{"model": state_dict}``
(``model0``, ``model1``, ... for virtual-pipeline chunks) with layers numbered locally
to their pipeline stage (to their chunk with VP) and experts locally to their EP rank.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FILE = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")


def rank_dir(tp_rank: int, pp_rank: int, ep_rank: int, pp: int, ep: int) -> str:
    """Megatron's ``get_checkpoint_name``: the PP field only with PP > 1, the EP field only with EP > 1."""
    name = f"mp_rank_{tp_rank:02d}"
    if pp > 1:
        name += f"_{pp_rank:03d}"
    if ep > 1:
        name += f"_{ep_rank:03d}"
    return name


@dataclass(frozen=True)
class LegacyLayout:
    """The layout a legacy checkpoint was written for (a loading run must match it)."""

    tp: int
    pp: int
    ep: int
    #: virtual-pipeline chunks per rank file (``model0``, ``model1``, ...); 1 without VP
    vp: int = 1
    #: layers on the first pipeline stage when uneven (Megatron-LM's ``--decoder-first-pipeline-num-layers``)
    pp0_layers: int | None = None

    @classmethod
    def detect(cls, iter_dir: Path) -> "LegacyLayout":
        """From the metadata we write, else Megatron's saved ``args``, else the rank directory names."""
        ranks = [m for p in sorted(iter_dir.iterdir()) if (m := _RANK_DIR.match(p.name))]
        if not ranks:
            raise FileNotFoundError(f"{iter_dir}: no mp_rank_* directories")
        path = iter_dir / ranks[0].group(0) / FILE
        first = load_file(path)
        chunks = len(model_state(first, path))
        if "pai_patch" in first:
            meta = first["pai_patch"]
            return cls(meta["tp"], meta["pp"], meta["ep"], meta.get("vp") or 1, meta.get("pp0_layers"))
        args = first.get("args")
        if args is not None:
            return cls(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                       getattr(args, "expert_model_parallel_size", 1), chunks,
                       getattr(args, "decoder_first_pipeline_num_layers", None))
        # Without metadata a single extra field is read as the pipeline rank (dense models).
        tp = 1 + max(int(m.group(1)) for m in ranks)
        pp = 1 + max(int(m.group(2) or 0) for m in ranks)
        ep = 1 + max(int(m.group(3) or 0) for m in ranks)
        return cls(tp, pp, ep, chunks)

    def path(self, iter_dir: Path, tp_rank: int, pp_rank: int, ep_rank: int) -> Path:
        return iter_dir / rank_dir(tp_rank, pp_rank, ep_rank, self.pp, self.ep) / FILE

    def describe(self) -> str:
        extra = (f" VP={self.vp}" if self.vp > 1 else "") + (
            f" first-stage layers={self.pp0_layers}" if self.pp0_layers is not None and self.pp > 1 else "")
        return f"TP={self.tp} PP={self.pp} EP={self.ep}{extra}"


def load_file(path: Path) -> dict[str, Any]:
    """A rank file; only tensors, containers and Megatron's ``argparse.Namespace`` are unpickled."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing rank file")
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def model_state(checkpoint: dict[str, Any], path: Path) -> list[dict[str, torch.Tensor]]:
    """The model chunks of a rank file: ``model`` or ``model0``, ``model1``, ... (virtual pipeline)."""
    if "model" in checkpoint:
        return [checkpoint["model"]]
    chunks = sorted((k for k in checkpoint if re.fullmatch(r"model\d+", k)), key=lambda k: int(k[5:]))
    if not chunks:
        raise ValueError(f"{path}: no 'model' entry (keys: {', '.join(sorted(checkpoint))})")
    return [checkpoint[k] for k in chunks]


def save_file(path: Path, chunks: list[dict[str, torch.Tensor]], meta: dict[str, Any], iteration: int) -> None:
    """One rank file: ``model``, or ``model0``, ``model1``, ... for virtual-pipeline chunks (as Megatron-LM saves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    models = {"model": chunks[0]} if len(chunks) == 1 else {f"model{i}": state for i, state in enumerate(chunks)}
    torch.save({**models, "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration, "pai_patch": meta}, path)
