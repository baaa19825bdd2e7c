"""Build the decoder and tokenizer for ``--hf DIR`` or ``--mcore DIR`` (a Megatron-Core checkpoint at any TP)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from pai_patch.checkpoint_dir import TRACKER, has_checkpoint
from pai_patch.generation.decoders import HFDecoder, McoreDecoder
from pai_patch.models.base import Runtime



def load_tokenizer(name_or_dir: str | None, *, hf: str | None = None, mcore: str | None = None,
                   family: str | None = None) -> Any:
    """``--tokenizer`` (a directory, ``shipped`` or a seed class name of ``family``), by default the model's own.

    The model's own is the HF directory's, or the copy a Megatron checkpoint carries (``convert hf2mcore``
    and training write one); a checkpoint without one gets the shipped tokenizer, and says so.
    """
    from pai_patch.data import tokenizer

    if name_or_dir is None and hf is None and not tokenizer.has_tokenizer(mcore):
        print(f"note: {mcore} holds no tokenizer files; using the shipped tokenizer (--tokenizer DIR for another)",
              file=sys.stderr)
        name_or_dir = "shipped"
    return tokenizer.load_tokenizer(name_or_dir or hf or mcore, hf=hf, checkpoint=mcore, family=family)


def hf_decoder(hf_dir: str | Path, dtype: torch.dtype = torch.float32) -> HFDecoder:
    from transformers import AutoModelForCausalLM

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json — expected an HF checkpoint directory")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return HFDecoder(AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).to(device))


def check_mcore_dir(ckpt_dir: str | Path) -> Path:
    """Fail before building anything when the directory holds no Megatron checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: checkpoint directory not found")
    if not has_checkpoint(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir}: no Megatron-Core checkpoint here (expected {TRACKER} next to "
                                "iter_*/ or release/; convert an HF model with `pai_patch convert` or train one)")
    return ckpt_dir


def mcore_decoder(ckpt_dir: str | Path, family_name: str, size_name: str | None, rt: Runtime, *,
                  verify: bool = True) -> McoreDecoder:
    """Build the family's model for this TP rank and load its shard of the checkpoint
    (refused when its completeness marker or checksums fail, unless ``verify=False``).

    Must run inside :func:`pai_patch.parallel.model_parallel` with ``rt``.
    """
    from pai_patch.models import get_family

    ckpt_dir = check_mcore_dir(ckpt_dir)
    family = get_family(family_name)
    size = family.size(size_name)
    try:
        from pai_patch.convert.io import load_model_checkpoint
    except ImportError as err:
        raise FileNotFoundError(f"loading {ckpt_dir} needs pai_patch.convert.io ({err})") from None
    model = family.build(size, rt)
    if torch.cuda.is_available():
        model = model.cuda()
    load_model_checkpoint([model], ckpt_dir, verify=verify)
    return McoreDecoder(model, size.vocab_size)
