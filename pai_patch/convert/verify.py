"""``convert verify``: the same tokens through transformers and through megatron-core, logits compared.

This is the check that catches what a bit-exact round trip cannot: a conversion that is
its own inverse but puts heads in the wrong order would still round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pai_patch.convert.io import load_model_checkpoint
from pai_patch.models import families
from pai_patch.models.base import ModelFamily, Runtime, read_hf_config


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < self.tolerance


def family_of(hf_dir: Path) -> ModelFamily:
    """The registered family whose HF architecture the checkpoint's config.json names."""
    path = hf_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; not an HF checkpoint directory (or pass --model)")
    names = read_hf_config(path).get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{path}: architectures = {names!r}, expected a list of class names such as "
                         f"{[next(iter(families().values())).hf_architecture]!r}")
    for family in families().values():
        if family.hf_architecture in names:
            return family
    raise ValueError(f"{hf_dir / 'config.json'}: architectures {names} match no family; "
                     f"supported: {', '.join(f.hf_architecture for f in families().values())}")


def sample_tokens(vocab_size: int, batch: int = 2, length: int = 32, seed: int = 1234) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def megatron_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None).float()


def hf_logits(hf_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits.float()


def verify(hf_dir: Path, mcore_dir: Path, *, size_name: str | None = None, tolerance: float = 1e-4) -> Parity:
    """Build both models (fp32, TP=PP=1, one process) and compare logits on one fixed batch."""
    from pai_patch.parallel import model_parallel

    family = family_of(hf_dir)
    size = family.size(size_name) if size_name else family.size_from_config(hf_dir / "config.json")
    tokens = sample_tokens(size.vocab_size)
    with model_parallel(Runtime()):
        model = family.build(size, Runtime(seq_length=tokens.shape[1])).eval()
        load_model_checkpoint([model], str(mcore_dir))
        ours = megatron_logits(model, tokens)[..., : size.vocab_size]
    theirs = hf_logits(hf_dir, tokens)
    return Parity(float((ours - theirs).abs().max()), tolerance)
