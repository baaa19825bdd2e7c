"""SDPA core attention: V padded to the q/k head dim (flash for MLA) gives the unpadded numbers.

The padded path is chosen only on CUDA; ``attention.FORCE_VALUE_PADDING`` takes it here on
CPU, where it runs PyTorch's CPU flash kernel against the math kernel of the unpadded call.
"""

from __future__ import annotations

import logging

import pytest
import torch

from pai_patch.models import attention
from pai_patch.models.attention import attend, choose_sdpa_kernel

SEQ = 20
PACKED_CU = torch.tensor([0, 6, 13, 18], dtype=torch.int32)  # three samples, then two padding positions
CUDA = torch.device("cuda")  # a device object only: nothing runs on it here


def _attend_with_grads(padded: bool, monkeypatch: pytest.MonkeyPatch, *, heads: int, kv_heads: int, dk: int,
                       dv: int, cu_seqlens: torch.Tensor | None):
    """Output and q/k/v gradients of one attention call, with the V padding forced on or off."""
    monkeypatch.setattr(attention, "FORCE_VALUE_PADDING", padded)
    gen = torch.Generator().manual_seed(dk + dv)
    q, k, v = (torch.randn(SEQ, 2, h, d, generator=gen, requires_grad=True)
               for h, d in ((heads, dk), (kv_heads, dk), (kv_heads, dv)))
    weight = torch.randn(SEQ, 2, heads * dv, generator=gen)
    out = attend(q, k, v, causal=True, cu_seqlens=cu_seqlens, scale=dk**-0.5)
    return out, torch.autograd.grad((out * weight).sum(), (q, k, v))


@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_padded_value_equals_unpadded(packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = dict(heads=4, kv_heads=4, dk=24, dv=16)  # MLA-like: q/k wider than v
    cu = PACKED_CU if packed else None
    chosen = choose_sdpa_kernel(24, 16, 4, 4, torch.float32, torch.device("cpu"), masked=packed, force_padding=True)
    assert chosen.value_dim == 24 and chosen.name.endswith("(v padded)"), chosen
    want, want_grads = _attend_with_grads(False, monkeypatch, **shape, cu_seqlens=cu)
    got, got_grads = _attend_with_grads(True, monkeypatch, **shape, cu_seqlens=cu)
    assert got.shape == (SEQ, 2, 4 * 16)
    assert not torch.equal(got, want)  # another kernel ran (CPU flash, not math) ...
    torch.testing.assert_close(got, want)  # ... and agrees to fp32 precision
    for name, have, expected in zip("qkv", got_grads, want_grads):
        torch.testing.assert_close(have, expected, msg=lambda m, n=name: f"d{n}: {m}")


def test_gqa_with_equal_widths_is_not_padded(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = dict(heads=4, kv_heads=2, dk=16, dv=16)
    chosen = choose_sdpa_kernel(16, 16, 4, 2, torch.float32, torch.device("cpu"), masked=False, force_padding=True)
    assert chosen.value_dim == 16 and "padded" not in chosen.name
    plain, plain_grads = _attend_with_grads(False, monkeypatch, **shape, cu_seqlens=None)
    forced, forced_grads = _attend_with_grads(True, monkeypatch, **shape, cu_seqlens=None)
    assert torch.equal(forced, plain) and all(torch.equal(a, b) for a, b in zip(forced_grads, plain_grads))


@pytest.mark.parametrize("dtype,masked,reason", [
    (torch.float32, False, "bf16/fp16, not float32"),
    (torch.bfloat16, True, "dense mask"),
])
def test_flash_blockers_keep_value_unpadded(dtype: torch.dtype, masked: bool, reason: str) -> None:
    assert attention._padding_blocker(dtype, CUDA, masked) is not None
    assert reason in attention._padding_blocker(dtype, CUDA, masked)
    assert attention._padding_blocker(torch.bfloat16, CUDA, False) is None  # only the width stands in the way
    cpu = choose_sdpa_kernel(192, 128, 2, 2, torch.float32, torch.device("cpu"), masked=False)
    assert cpu.value_dim == 128 and "not cpu" in cpu.reason


def test_head_dims_past_flash_are_never_padded() -> None:
    chosen = choose_sdpa_kernel(272, 128, 1, 1, torch.float32, torch.device("cpu"), masked=False, force_padding=True)
    assert chosen.value_dim == 128 and "up to 256" in chosen.reason


def test_choice_is_logged_once_and_probes_under_inference_mode(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=attention.__name__), torch.inference_mode():
        first = choose_sdpa_kernel(40, 24, 3, 1, torch.float32, torch.device("cpu"), masked=False,
                                   force_padding=True)
        again = choose_sdpa_kernel(40, 24, 3, 1, torch.float32, torch.device("cpu"), masked=False,
                                   force_padding=True)
    assert again is first and first.name == "flash (v padded)"  # the CPU flash kernel takes the padded shape
    lines = [r.getMessage() for r in caplog.records if r.name == attention.__name__]
    assert len(lines) == 1 and "sdpa/flash (v padded) for q/k head dim 40, v 24" in lines[0], lines


def test_mla_model_logits_and_gradients_with_padded_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny DeepSeek-V2 through ``SDPACoreAttention``: the padded path gives the same model."""
    from pai_patch.models import get_family
    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    family, rt = get_family("deepseek_v2"), Runtime(seq_length=SEQ)
    size = family.size("tiny")
    tokens = torch.randint(0, size.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(SEQ).expand_as(tokens)
    results = []
    with model_parallel(rt):
        torch.manual_seed(0)
        model = family.build(size, rt)
        for padded in (False, True):
            monkeypatch.setattr(attention, "FORCE_VALUE_PADDING", padded)
            model.zero_grad(set_to_none=True)
            logits = model(tokens, positions, None)
            logits.float().square().mean().backward()
            results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                              if p.grad is not None}))
    (want, want_grads), (got, got_grads) = results
    assert not torch.equal(got, want)  # the padded path ran ...
    torch.testing.assert_close(got, want)  # ... with the same numbers to fp32 precision
    assert got_grads.keys() == want_grads.keys() and any("linear_qkv" in n or "linear_kv" in n for n in got_grads)
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, want_grads[name], msg=lambda m, n=name: f"{n}: {m}")
