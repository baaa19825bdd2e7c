"""Build the decoder and tokenizer for ``--hf DIR`` or ``--mcore DIR`` (a Megatron-Core checkpoint at any TP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pai_patch.generation.decoders import HFDecoder, McoreDecoder
from pai_patch.models.base import Runtime

SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"
TRACKER = "latest_checkpointed_iteration.txt"


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir() or not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model",
                                                                        "tokenizer_config.json")):
        raise FileNotFoundError(f"{path}: no tokenizer (expected tokenizer.json or tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(path))


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
    if not (ckpt_dir / TRACKER).is_file():
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
