"""`python -m pai_patch doctor` and the attention-backend decision, on this CPU-only machine."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types

import pytest
import torch

from pai_patch import backends

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answers")


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pai_patch", "doctor", *args], capture_output=True, text=True,
                          timeout=120)


def test_reports_no_gpu_and_sdpa():
    out = doctor()
    assert out.returncode == 0, out.stderr
    assert "GPU                          none" in out.stdout
    assert "not available" in out.stdout
    assert "FL=true    sdpa" in out.stdout and "FL=false   sdpa" in out.stdout
    assert "scaled_dot_product_attention (attention_backend=auto)" in out.stdout
    assert "megatron-core                0.16.1" in out.stdout


def test_json_output_parses_and_lists_every_package():
    out = doctor("--json", "--recipe-switches", "FL=true", "PR=bf16")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["gpus"] == [] and report["cuda"] is None
    assert report["selected"]["attention"] == "sdpa" and report["selected"]["use_te"] is False
    assert report["selected"]["attention_backend"] == "auto"  # what the model config forces
    for name in ("torch", "megatron-core", "transformer-engine", "flash-attn 2", "FA3 (flash_attn_interface)",
                 "apex", "deepspeed", "transformers", "lm-eval"):
        assert name in report["packages"]
    assert report["packages"]["torch"] == torch.__version__
    assert report["problems"] == []


def test_rejects_fp8_and_fa3_with_clear_messages():
    out = doctor("--recipe-switches", "PR=fp8", "FA3=true")
    assert out.returncode == 1
    errors = [line for line in out.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert "PR=fp8 needs a Hopper (sm_90)" in errors[0] and "Transformer Engine" in errors[0]
    assert "no CUDA GPU" in errors[0] and "PR=bf16" in errors[0]
    assert "FA3=true needs a Hopper GPU" in errors[1]


def test_json_keeps_problems_and_exit_status():
    out = doctor("--json", "--recipe-switches", "PR=fp8")
    assert out.returncode == 1
    assert "fp8" in json.loads(out.stdout)["problems"][0]


def test_bad_switch_is_a_usage_error():
    out = doctor("--recipe-switches", "PR=fp4")
    assert out.returncode == 2 and "PR must be one of fp32, fp16, bf16, fp8" in out.stderr
    out = doctor("--recipe-switches", "XX=1")
    assert out.returncode == 2 and "KEY in FL, PR, FA3, TE" in out.stderr


def test_resolve_backend_on_cpu_picks_sdpa_and_logs(caplog):
    with caplog.at_level(logging.INFO, logger="pai_patch.backends"):
        choice = backends.resolve_backend(flash_attn=True, precision="bf16")
    assert choice == backends.BackendChoice(False, "sdpa", choice.reason) and "no CUDA" in choice.reason
    assert choice.attn_backend == "auto"
    assert "attention backend: sdpa (FL=true, PR=bf16)" in caplog.text
    assert "forces attention_backend=auto" in caplog.text


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cpu_precisions_allowed(precision):
    backends.check_precision(precision)


@pytest.mark.parametrize("precision,message", [("fp8", "Transformer Engine"), ("int4", "unknown precision")])
def test_precision_rejected(precision, message):
    with pytest.raises(ValueError, match=message):
        backends.resolve_backend(flash_attn=False, precision=precision)


def test_fa3_choice_pins_te_to_its_flash_path():
    assert backends.BackendChoice(True, "fa3", "").attn_backend == "flash"
    assert backends.BackendChoice(True, "te-flash", "").attn_backend == "flash"
    assert backends.BackendChoice(True, "te-fused", "").attn_backend == "fused"


def test_flash_is_forced_by_the_model_config_not_by_nvte_variables(monkeypatch):
    """FL=true with TE on Hopper: the training config forces flash attention through megatron-core's
    ``attention_backend``; no ``NVTE_*=0`` is set, which megatron-core 0.16.1 rejects under ``auto``."""
    from megatron.core.transformer.enums import AttnBackend

    from pai_patch.models import get_family
    from pai_patch.training.backend import backend_runtime
    from pai_patch.training.config import TrainConfig, TrainSection

    for name in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backends, "cuda_capability", lambda: (9, 0))
    monkeypatch.setattr(backends, "te_available", lambda: True)
    monkeypatch.setattr(backends, "importable", lambda name: name == "flash_attn")
    cfg = TrainConfig(train=TrainSection(train_iters=10, precision="bf16", flash_attn=True))
    rt = backend_runtime(cfg)
    family = get_family(cfg.model.family)
    config = family.transformer_config(family.size(cfg.model.size), rt)
    assert (rt.use_te, config.attention_backend) == (True, AttnBackend.flash)
    assert not {k: v for k, v in os.environ.items() if k.startswith("NVTE_") and v == "0"}
    cfg.train.flash_attn = False
    assert backend_runtime(cfg).attention_backend == "fused"


def test_hopper_without_fa3_falls_back_with_reason(monkeypatch):
    """The GPU decision table, with the probes replaced: the reasons a GPU user would read."""
    monkeypatch.setattr(backends, "cuda_capability", lambda: (9, 0))
    monkeypatch.setattr(backends, "te_available", lambda: True)
    monkeypatch.setattr(backends, "importable", lambda name: name == "flash_attn")
    choice = backends.choose_backend(True)
    assert choice.attention == "te-flash" and "flash_attn_interface does not import" in choice.reason
    monkeypatch.setattr(backends, "importable", lambda name: True)
    assert backends.choose_backend(True).attention == "fa3"
    assert backends.choose_backend(False).attention == "te-fused"
    monkeypatch.setattr(backends, "cuda_capability", lambda: (8, 0))
    a100 = backends.choose_backend(True)
    assert a100.attention == "te-flash" and "sm_80 is not Hopper" in a100.reason
    monkeypatch.setattr(backends, "te_available", lambda: False)
    assert backends.choose_backend(True).attention == "sdpa"
    with pytest.raises(ValueError, match="fp8 needs Transformer Engine"):
        monkeypatch.setattr(backends, "cuda_capability", lambda: (9, 0))
        backends.check_precision("fp8")


def test_te_available_decides_on_its_pytorch_extension(monkeypatch):
    """TE 2.x's top-level package imports even when its compiled extension does not load."""
    from pai_patch.models import base

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)  # importing it raises ImportError
    assert not base.te_available()
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", types.ModuleType("transformer_engine.pytorch"))
    assert base.te_available()


def test_mla_on_a100_takes_te_fused_not_flash(monkeypatch):
    """TE disables flash-attn 2 when q/k and v head dims differ (DeepSeek-V2's MLA): A100/A800 get fused."""
    from pai_patch.training.backend import backend_choice
    from pai_patch.training.config import ModelSection, TrainConfig, TrainSection

    monkeypatch.setattr(backends, "cuda_capability", lambda: (8, 0))
    monkeypatch.setattr(backends, "te_available", lambda: True)
    monkeypatch.setattr(backends, "importable", lambda name: True)
    train = TrainSection(train_iters=10, precision="bf16", flash_attn=True)
    mla = backend_choice(TrainConfig(model=ModelSection(family="deepseek_v2", size="A2.4B"), train=train))
    assert (mla.attention, mla.attn_backend) == ("te-fused", "fused")
    assert "equal q/k and v head dims" in mla.reason
    dense = backend_choice(TrainConfig(model=ModelSection(family="qwen2_5", size="1.5B"), train=train))
    assert (dense.attention, dense.attn_backend) == ("te-flash", "flash")


def test_fp8_on_ada_is_refused_in_one_line(monkeypatch):
    """The image builds TE for sm_80 and sm_90 only, so fp8 on an sm_89 GPU (L40S, 4090) stops up front."""
    monkeypatch.setattr(backends, "cuda_capability", lambda: (8, 9))
    monkeypatch.setattr(backends, "te_available", lambda: True)
    with pytest.raises(ValueError, match=r"PR=fp8 needs a Hopper \(sm_90\).*sm_89") as err:
        backends.check_precision("fp8")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(backends, "cuda_capability", lambda: (9, 0))
    backends.check_precision("fp8")
