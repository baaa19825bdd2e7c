"""Grouped-GEMM experts on the GPU: torch's CUTLASS kernel (bf16, sm90) against megatron's loop over
experts, with uneven and empty expert groups and counts handed over on the host as the alltoall
dispatcher does. Elsewhere the module must fall back to the loop and say why."""

from __future__ import annotations

import pytest
import torch

from tests.test_models_grouped_experts import COUNTS, config, inputs, pair, parallel_state, run  # noqa: F401


@pytest.mark.parametrize("counts", [COUNTS, [0, 17, 0, 1]])
@pytest.mark.parametrize("counts_on_host", [True, False])
def test_grouped_kernel_matches_the_loop_in_bf16(counts: list[int], counts_on_host: bool) -> None:
    sequential, grouped = (m.cuda() for m in pair(config(torch.bfloat16)))
    hidden, tokens_per_expert, probs = inputs(torch.bfloat16, counts)
    args = (hidden.cuda(), tokens_per_expert if counts_on_host else tokens_per_expert.cuda(), probs.cuda())
    expected, got = run(sequential, *args), run(grouped, *args)
    if torch.cuda.get_device_capability()[0] != 9:
        assert "needs bf16 on sm90" in grouped._fallback
        return
    assert grouped._fallback is None
    for want, have in zip([*expected[:3], *expected[3]], [*got[:3], *got[3]]):
        torch.testing.assert_close(have, want, atol=5e-2, rtol=5e-2)
    empty = [i for i, c in enumerate(counts) if c == 0]
    assert all(not got[3][2 * i + k].any() for i in empty for k in (0, 1))


def test_fp32_on_cuda_falls_back_to_the_loop() -> None:
    _, grouped = (m.cuda() for m in pair(config()))
    hidden, tokens_per_expert, probs = inputs(torch.float32)
    grouped(hidden.cuda(), tokens_per_expert, probs.cuda())
    assert "needs bf16 on sm90" in grouped._fallback
