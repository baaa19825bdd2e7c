"""Library warnings a user cannot act on stay out of every command's stderr; all others still show."""

from __future__ import annotations

import warnings

import pytest

from pai_patch.cli import KNOWN_WARNINGS, quiet_known_warnings
from tests.conftest import run_cli

#: (category, message, module) as megatron-core / torch raise them in a train, resume or convert run
SEEN_IN_RUNS = [
    (UserWarning, "If you are using transformer_engine as the transformer implementation, the core_attn is from "
     "transformer_engine and may be the fused version.", "megatron.core.transformer.transformer_config"),
    (FutureWarning, "`load_state_dict` is deprecated and will be removed in future versions. Please use `load` "
     "instead.", "megatron.core.dist_checkpointing.strategies.torch"),
    (FutureWarning, "Please use DTensor instead and we are deprecating ShardedTensor.", "pai_patch.patches.cpu"),
    (UserWarning, "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed.",
     "pai_patch.patches.cpu"),
    (FutureWarning, "`torch.distributed.reduce_scatter_tensor` is deprecated. Please use "
     "`torch.distributed.reduce_scatter_single` instead.", "torch.distributed.c10d_logger"),
    (UserWarning, "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to save in a "
     "single process.", "torch.distributed.checkpoint.utils"),
]


def _shown(category: type[Warning], message: str, module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn_explicit(message, category, "x.py", 1, module=module)
    return bool(caught)


@pytest.mark.parametrize(("category", "message", "module"), SEEN_IN_RUNS)
def test_known_library_warning_is_filtered(category: type[Warning], message: str, module: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.warnoptions", [])
    assert not _shown(category, message, module)
    assert _shown(category, message, "my_own_module")  # only from where it is known to come
    assert _shown(category, "some other " + message, module)  # and only that message


def test_every_filter_is_exercised() -> None:
    assert len(SEEN_IN_RUNS) == len(KNOWN_WARNINGS)  # one seen message per filter, each test above


def test_explicit_warning_options_show_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.warnoptions", ["always"])
    assert _shown(*SEEN_IN_RUNS[0])


def test_models_info_prints_no_library_warning() -> None:
    """It built a TransformerConfig with megatron's default cuda_graph_scope "full", which is deprecated and warned."""
    result = run_cli("models", "info", "qwen2_5")
    assert "Warning" not in result.stderr, result.stderr
    assert "qwen2_5" in result.stdout
