"""Every size row builds, and its parameter count equals the published checkpoint's."""

from __future__ import annotations

import json

import pytest

from pai_patch.models import families, get_family
from pai_patch.models.params import count_params
from tests.conftest import dense_families, run_cli

DENSE_ROWS = [(f, s) for f in dense_families() for s, row in get_family(f).sizes.items()
              if row.published_params is not None]


@pytest.mark.parametrize("family,size", DENSE_ROWS)
def test_param_count_matches_published(family: str, size: str) -> None:
    fam = get_family(family)
    row = fam.size(size)
    counts = count_params(fam, row)
    assert counts["params_total"] == row.published_params
    assert counts["params_active"] == counts["params_total"]  # dense: every parameter is active


def test_tied_embeddings_counted_once() -> None:
    fam = get_family("qwen2_5")
    tied, untied = fam.size("0.5B"), fam.size("7B")
    assert tied.tie_embeddings and not untied.tie_embeddings
    counts = count_params(fam, tied)
    # 0.5B: the output layer shares the embedding, so only one vocab x hidden table is counted
    assert counts["params_total"] - counts["params_embedding"] < 400_000_000


def test_models_info_json_cli() -> None:
    out = run_cli("models", "info", "llama2", "--size", "7B", "--json").stdout
    info = json.loads(out[out.index("{"):])
    assert info["params_total"] == 6_738_415_616
    assert info["size"]["num_layers"] == 32


def test_models_info_shows_an_explicit_head_dim() -> None:
    """Qwen3-0.6B: 16 heads of 128 on a hidden size of 1024, q/k norms, the published total."""
    out = run_cli("models", "info", "qwen3", "--size", "0.6B", "--json").stdout
    info = json.loads(out[out.index("{"):])
    assert info["params_total"] == 596_049_920
    assert (info["size"]["hidden_size"], info["size"]["head_dim"], info["size"]["qk_layernorm"]) == (1024, 128, True)


def test_unknown_size_lists_valid_ones() -> None:
    result = run_cli("models", "info", "qwen2_5", "--size", "9B", check=False)
    assert result.returncode == 2
    assert "valid sizes: tiny, 0.5B" in result.stderr


def test_every_family_has_a_tiny_size() -> None:
    for name, fam in families().items():
        assert "tiny" in fam.sizes, name
