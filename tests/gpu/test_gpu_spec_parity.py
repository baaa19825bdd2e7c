"""One converted checkpoint on a GPU: the local spec matches transformers, and the TE spec matches
the local one (when Transformer Engine imports), logits compared in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pai_patch.models import get_family
from pai_patch.models.base import Runtime, te_available
from tests.test_convert_parity import convert
from tests.test_convert_roundtrip import make_hf

#: fp32 on both sides; GPU kernels sum in another order than the CPU reference
TOLERANCE = 1e-3
FAMILIES = ["qwen2_5", "deepseek_v2"]


def gpu_logits(family_name: str, ckpt: Path, tokens: torch.Tensor, *, use_te: bool) -> torch.Tensor:
    """Logits of the tiny model built with the local or the TE spec on the GPU, loaded from ``ckpt``."""
    from pai_patch.convert.io import load_model_checkpoint
    from pai_patch.parallel import model_parallel

    family = get_family(family_name)
    size = family.size("tiny")
    rt = Runtime(seq_length=tokens.shape[1], use_te=use_te)
    with model_parallel(rt):
        model = family.build(size, rt).cuda().eval()
        load_model_checkpoint([model], str(ckpt))
        tokens = tokens.cuda()
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        with torch.no_grad():
            return model(tokens, positions, None).float().cpu()[..., : size.vocab_size]


def converted(family_name: str, tmp_path: Path) -> tuple[Path, Path, torch.Tensor]:
    from pai_patch.convert.verify import sample_tokens

    hf = make_hf(family_name, tmp_path / "hf")
    ckpt = convert(family_name, hf, tmp_path / "mcore")
    return hf, ckpt, sample_tokens(get_family(family_name).size("tiny").vocab_size)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_local_spec_on_gpu_matches_transformers(tmp_path: Path, family_name: str) -> None:
    from pai_patch.convert.verify import hf_logits

    hf, ckpt, tokens = converted(family_name, tmp_path)
    diff = (gpu_logits(family_name, ckpt, tokens, use_te=False) - hf_logits(hf, tokens)).abs().max().item()
    assert diff < TOLERANCE, diff


@pytest.mark.skipif(not te_available(), reason="Transformer Engine does not import here: no TE spec to compare")
@pytest.mark.parametrize("family_name", FAMILIES)
def test_te_spec_matches_local_spec_from_one_checkpoint(tmp_path: Path, family_name: str) -> None:
    _, ckpt, tokens = converted(family_name, tmp_path)
    local = gpu_logits(family_name, ckpt, tokens, use_te=False)
    te = gpu_logits(family_name, ckpt, tokens, use_te=True)
    assert (te - local).abs().max().item() < TOLERANCE
