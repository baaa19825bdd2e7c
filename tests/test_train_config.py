"""The training job schema: strict keys and types, overrides, token budgets."""

from __future__ import annotations

import pytest

from pai_patch.configio import ConfigError, from_dict
from pai_patch.training.cli import load_job
from pai_patch.training.config import TrainConfig, TrainSection


def test_overrides_are_typed() -> None:
    cfg = load_job(None, ["train.train_iters=7", "optim.lr=1e-4", "optim.min_lr=1e-5", "parallel.sequence_parallel=true"])
    assert cfg.train.iterations == 7 and cfg.optim.lr == 1e-4 and cfg.parallel.sequence_parallel is True


def test_unknown_key_names_the_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key train\.lr; valid keys here: .*micro_batch_size"):
        load_job(None, ["train.lr=1"])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got 'fast'"):
        load_job(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: expected an integer"):
        load_job(None, ["train.micro_batch_size=1.5"])


def test_token_budget_rounds_up_not_down() -> None:
    # The seed's pretrain example: 10000 tokens at GBS 8 x SEQ 128 = 9.77 iterations. The original's
    # integer division trains 9; we never silently drop the remainder (nor turn a budget into 0 steps).
    t = from_dict(TrainSection, {"train_tokens": 10000, "warmup_tokens": 100, "global_batch_size": 8,
                                 "seq_length": 128})
    assert t.iterations == 10 and t.warmup == 1
    tiny = from_dict(TrainSection, {"train_tokens": 5, "global_batch_size": 8, "seq_length": 128})
    assert tiny.iterations == 1


def test_exactly_one_budget() -> None:
    with pytest.raises(ConfigError, match="exactly one of train_iters or train_tokens"):
        from_dict(TrainSection, {"train_iters": 3, "train_tokens": 10})
    with pytest.raises(ConfigError, match=r"warmup \(100 iterations\) must be shorter than training \(3"):
        from_dict(TrainSection, {"train_iters": 3, "warmup_iters": 100})
    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainSection, {"train_iters": 3, "precision": "fp64"})


def test_sft_pad_length_sets_sequence() -> None:
    cfg = from_dict(TrainConfig, {"data": {"sft": True, "pad_length": 96}, "train": {"train_iters": 1}})
    assert cfg.seq_length == 96


def test_fp8_resolves_to_bf16_params_with_the_seeds_delayed_scaling() -> None:
    """PR=fp8 as the seeds run it: bf16 weights (fp32 ones disable TE's fused attention), fp8 GEMMs,
    amax as the max over 1024 steps rather than megatron's default (the last step only)."""
    import torch

    from pai_patch.models import get_family

    cfg = TrainConfig(train=TrainSection(train_iters=10, precision="fp8"))
    rt = cfg.runtime(use_te=True, attention_backend="fused")
    family = get_family(cfg.model.family)
    config = family.transformer_config(family.size(cfg.model.size), rt)
    assert (config.params_dtype, config.pipeline_dtype, config.bf16) == (torch.bfloat16, torch.bfloat16, True)
    assert (config.fp8, config.fp8_recipe) == ("hybrid", "delayed")
    assert (config.fp8_amax_history_len, config.fp8_amax_compute_algo) == (1024, "max")


def test_optimizer_offload_without_cuda_is_ignored_in_one_line(caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeds' OPTIMIZER_OFFLOAD=static/auto was dropped on CPU without a word."""
    import logging

    import torch

    from pai_patch.training.loop import _optimizer_offload

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pai_patch.train"):
        assert _optimizer_offload("false") is False and not caplog.records
        assert _optimizer_offload("static") is False
    assert [r.getMessage() for r in caplog.records] == [
        "no CUDA: optim.offload=static (OPTIMIZER_OFFLOAD) ignored; the optimizer states are in host memory already"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _optimizer_offload("auto") is True
