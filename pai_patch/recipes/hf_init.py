"""A seeded, randomly initialised HF checkpoint of a family's size.

No model can be downloaded here, so the tiny recipes start their pipeline from this
stand-in for the published checkpoint; it is a real transformers model (the conversion
oracle), written with the project's tokenizer next to it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pai_patch.utils import atomic_path


def write_random_hf(family_name: str, size_name: str, out: Path, tokenizer: str, *, seed: int = 1234) -> None:
    from transformers import AutoModelForCausalLM

    from pai_patch.data.tokenizer import load_tokenizer
    from pai_patch.models import get_family

    family = get_family(family_name)
    config = family.hf_config(family.size(size_name))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tok = load_tokenizer(tokenizer)
    if out.exists():
        shutil.rmtree(out)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
