"""Grouped-GEMM routed experts (``GroupedSequentialMLP``) against megatron's ``SequentialMLP``.

Both get the same weights; the grouped forward must give the same outputs and gradients (fp32
tight, bf16 loose), keep the same parameters and checkpoints, feed megatron's DDP hooks with the
distributed optimizer, and fall back to the loop, saying why, where it cannot run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from pai_patch.models.base import Runtime

EXPERTS = 4
HIDDEN, FFN = 32, 48
#: tokens routed to each local expert; expert 1 gets none
COUNTS = [5, 0, 9, 3]


@pytest.fixture(scope="module", autouse=True)
def parallel_state() -> Iterator[None]:
    from pai_patch.parallel import model_parallel

    with model_parallel(Runtime()):
        yield


def config(dtype: torch.dtype = torch.float32, **overrides: object):  # noqa: ANN201 - TransformerConfig
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = dict(num_layers=1, hidden_size=HIDDEN, num_attention_heads=4, ffn_hidden_size=64,
                  moe_ffn_hidden_size=FFN, num_moe_experts=EXPERTS, moe_router_topk=2, gated_linear_unit=True,
                  activation_func=F.silu, add_bias_linear=False, use_cpu_initialization=True, params_dtype=dtype,
                  bf16=dtype == torch.bfloat16, init_method_std=0.2)
    return TransformerConfig(**{**kwargs, **overrides})


def experts(cls: type, cfg, seed: int = 0) -> torch.nn.Module:  # noqa: ANN001
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLPSubmodules

    torch.manual_seed(seed)
    return cls(EXPERTS, cfg, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
               pg_collection=ProcessGroupCollection.use_mpu_process_groups())


def pair(cfg) -> tuple[torch.nn.Module, torch.nn.Module]:  # noqa: ANN001
    """A ``SequentialMLP`` and a ``GroupedSequentialMLP`` holding the same weights."""
    from megatron.core.transformer.moe.experts import SequentialMLP

    from pai_patch.models.grouped_experts import GroupedSequentialMLP

    sequential, grouped = experts(SequentialMLP, cfg, seed=0), experts(GroupedSequentialMLP, cfg, seed=1)
    grouped.load_state_dict(sequential.state_dict())
    return sequential, grouped


def inputs(dtype: torch.dtype, counts: list[int] = COUNTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(sum(counts), HIDDEN, generator=g).to(dtype)
    probs = torch.rand(sum(counts), generator=g)  # fp32, as the router hands them over (moe_router_dtype)
    return hidden, torch.tensor(counts), probs


def run(module: torch.nn.Module, hidden: torch.Tensor, counts: torch.Tensor, probs: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Output, input gradient, probs gradient and each expert weight's gradient, for a fixed upstream gradient."""
    module.zero_grad()
    hidden = hidden.clone().requires_grad_()
    probs = probs.clone().requires_grad_()
    out, bias = module(hidden, counts, probs)
    assert bias is None
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out))
    return out.detach(), hidden.grad, probs.grad, [p.grad for p in module.parameters()]


def assert_parity(cfg, dtype: torch.dtype, atol: float, rtol: float, counts: list[int] = COUNTS) -> None:  # noqa: ANN001
    sequential, grouped = pair(cfg)
    expected, got = run(sequential, *inputs(dtype, counts)), run(grouped, *inputs(dtype, counts))
    assert grouped._fallback is None, grouped._fallback
    for name, want, have in zip(("output", "input grad", "probs grad"), expected[:3], got[:3]):
        torch.testing.assert_close(have, want, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    assert len(got[3]) == 2 * EXPERTS and all(g is not None for g in got[3])
    for i, (want, have) in enumerate(zip(expected[3], got[3])):
        torch.testing.assert_close(have, want, atol=atol, rtol=rtol, msg=lambda m: f"weight grad {i}: {m}")


def test_fp32_forward_and_backward_match_sequential() -> None:
    assert_parity(config(), torch.float32, atol=1e-6, rtol=1e-5)


def test_bf16_forward_and_backward_match_sequential() -> None:
    assert_parity(config(torch.bfloat16), torch.bfloat16, atol=2e-2, rtol=2e-2)


def test_expert_without_tokens_gets_a_zero_gradient() -> None:
    sequential, grouped = pair(config())
    *_, grads = run(grouped, *inputs(torch.float32))
    empty = [grads[2], grads[3]]  # expert 1's fc1 and fc2 (parameters are listed expert by expert)
    assert all(g is not None and not g.any() for g in empty)
    assert all(g.any() for i, g in enumerate(grads) if i not in (2, 3))


def test_all_tokens_on_one_expert_and_none_at_all() -> None:
    assert_parity(config(), torch.float32, atol=1e-6, rtol=1e-5, counts=[0, 0, 11, 0])
    assert_parity(config(), torch.float32, atol=0, rtol=0, counts=[0, 0, 0, 0])  # an EP rank may get no tokens
    _, grouped = pair(config())
    out, hidden_grad, _, grads = run(grouped, *inputs(torch.float32, [0, 0, 0, 0]))
    assert out.shape == hidden_grad.shape == (0, HIDDEN)
    assert all(g is not None and g.shape == p.shape and not g.any() for g, p in zip(grads, grouped.parameters()))


def test_per_token_scale_applies_after_the_activation() -> None:
    """Scaling the probs scales the output linearly (they multiply the activation, fc2 is linear),
    unlike scaling the input, and the probs get a gradient that matches ``SequentialMLP``'s."""
    _, grouped = pair(config())
    hidden, counts, probs = inputs(torch.float32)
    with torch.no_grad():
        out, _ = grouped(hidden, counts, probs)
        doubled, _ = grouped(hidden, counts, 2 * probs)
        torch.testing.assert_close(doubled, 2 * out)
        assert not torch.allclose(grouped(2 * hidden, counts, probs)[0], 2 * out)


def test_probs_on_input_and_plain_activation_match_sequential() -> None:
    assert_parity(config(moe_apply_probs_on_input=True, moe_router_topk=1, moe_router_pre_softmax=True), torch.float32, atol=1e-6, rtol=1e-5)
    assert_parity(config(gated_linear_unit=False, activation_func=F.gelu), torch.float32, atol=1e-6, rtol=1e-5)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict's tensors (without the linears' empty ``_extra_state`` entries)."""
    return {k: v for k, v in module.state_dict().items() if torch.is_tensor(v)}


def test_state_dict_keys_and_shapes_are_sequential_mlps() -> None:
    sequential, grouped = pair(config())
    assert list(grouped.state_dict()) == list(sequential.state_dict())
    assert {k: v.shape for k, v in weights(grouped).items()} == {k: v.shape for k, v in weights(sequential).items()}
    assert "local_experts.3.linear_fc2.weight" in grouped.state_dict()
    assert sorted(grouped.sharded_state_dict(prefix="mlp.experts.")) == \
        sorted(sequential.sharded_state_dict(prefix="mlp.experts."))


@pytest.mark.parametrize("direction", ["grouped->sequential", "sequential->grouped"])
def test_torch_dist_checkpoint_loads_into_the_other(tmp_path: Path, direction: str) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.transformer.moe.experts import SequentialMLP

    from pai_patch.models.grouped_experts import GroupedSequentialMLP

    source_cls, target_cls = (GroupedSequentialMLP, SequentialMLP) if direction.startswith("g") \
        else (SequentialMLP, GroupedSequentialMLP)
    source, target = experts(source_cls, config(), seed=0), experts(target_cls, config(), seed=1)
    dist_checkpointing.save(source.sharded_state_dict(prefix="experts."), str(tmp_path))
    loaded = dist_checkpointing.load(target.sharded_state_dict(prefix="experts."), str(tmp_path))
    target.load_state_dict({k.removeprefix("experts."): v for k, v in loaded.items()})
    assert weights(target).keys() == weights(source).keys()
    for name, want in weights(source).items():
        assert torch.equal(weights(target)[name], want), name


def test_ddp_hooks_fill_main_grad_with_the_distributed_optimizer() -> None:
    """Megatron's DDP accumulates each expert weight's gradient into its ``main_grad`` through a
    per-parameter hook; the distributed optimizer then steps every expert that got tokens."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = config()
    sequential, grouped = pair(cfg)
    *_, expected = run(sequential, *inputs(torch.float32))
    ddp = DistributedDataParallel(cfg, DistributedDataParallelConfig(use_distributed_optimizer=True,
                                                                     overlap_grad_reduce=True), grouped)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2, weight_decay=0.0,
                                                       use_distributed_optimizer=True),
                                       [ddp])
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    before = [p.detach().clone() for p in grouped.parameters()]
    hidden, counts, probs = inputs(torch.float32)
    out, _ = ddp(hidden.requires_grad_(), counts, probs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
    ddp.finish_grad_sync()  # with overlap_grad_reduce this asserts that every hook fired
    for i, (param, want) in enumerate(zip(grouped.parameters(), expected)):
        assert param.grad is None, i  # the hook moved it into main_grad
        torch.testing.assert_close(param.main_grad, want, atol=1e-6, rtol=1e-5)
    ok, _, _ = optimizer.step()
    assert ok
    moved = [not torch.equal(b, p) for b, p in zip(before, grouped.parameters())]
    assert moved == [c > 0 for c in COUNTS for _ in range(2)]


@pytest.mark.parametrize("overrides, dtype, reason", [
    (dict(add_bias_linear=True), torch.float32, "experts have biases"),
    (dict(moe_ffn_hidden_size=42), torch.float32, "multiple of 16 bytes"),
    (dict(), torch.float64, "rejects torch.float64 on cpu"),
])
def test_falls_back_to_the_loop_and_logs_why(caplog: pytest.LogCaptureFixture, overrides: dict, dtype: torch.dtype,
                                             reason: str) -> None:
    from megatron.core.transformer.moe.experts import SequentialMLP

    from pai_patch.models import grouped_experts

    cfg = config(dtype if dtype != torch.float64 else torch.float32, **overrides)
    sequential, grouped = pair(cfg)
    if dtype == torch.float64:
        sequential.double(), grouped.double()
    hidden, counts, probs = inputs(dtype, COUNTS)
    grouped_experts._logged.clear()
    with caplog.at_level(logging.INFO, logger="pai_patch.models.grouped_experts"), torch.no_grad():
        got, _ = grouped(hidden, counts, probs)
        grouped(hidden, counts, probs)
        expected, _ = SequentialMLP.forward(sequential, hidden, counts, probs)
    assert reason in grouped._fallback
    assert [r.getMessage() for r in caplog.records] == [f"MoE experts: SequentialMLP loop ({grouped._fallback})"]
    assert torch.equal(got, expected)


def test_torch_without_grouped_mm_falls_back_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older torch (NGC 25.03's) has no ``torch._grouped_mm`` at all: the loop runs, and says why."""
    from megatron.core.transformer.moe.experts import SequentialMLP

    sequential, grouped = pair(config())
    monkeypatch.delattr(torch, "_grouped_mm")
    hidden, counts, probs = inputs(torch.float32)
    with torch.no_grad():
        got, _ = grouped(hidden, counts, probs)
        expected, _ = SequentialMLP.forward(sequential, hidden, counts, probs)
    assert "has no torch._grouped_mm" in grouped._fallback
    assert torch.equal(got, expected)


def test_grouped_choice_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from pai_patch.models import grouped_experts

    grouped_experts._logged.clear()
    _, grouped = pair(config())
    with caplog.at_level(logging.INFO, logger="pai_patch.models.grouped_experts"):
        grouped(*inputs(torch.float32))
        grouped(*inputs(torch.float32))
    assert [r.getMessage() for r in caplog.records] == ["MoE experts: grouped GEMM (torch._grouped_mm, torch.float32 on cpu)"]


def test_deepseek_v2_local_spec_uses_grouped_experts() -> None:
    from pai_patch.models import get_family
    from pai_patch.models.grouped_experts import GroupedSequentialMLP

    family = get_family("deepseek_v2")
    size = family.size("tiny")
    model = family.build(size, Runtime())
    layers = model.decoder.layers
    assert [type(layer.mlp.experts) is GroupedSequentialMLP for layer in layers[size.first_k_dense:]] == \
        [True] * (size.num_layers - size.first_k_dense)
    key = f"decoder.layers.{size.first_k_dense}.mlp.experts.local_experts.{size.num_experts - 1}.linear_fc1.weight"
    assert model.state_dict()[key].shape == (2 * size.moe_ffn_hidden_size, size.hidden_size)


@pytest.mark.slow
def test_fused_weighted_swiglu_matches_sequential() -> None:
    """The GPU configuration (``bias_activation_fusion``) goes through megatron's fused weighted SwiGLU in both
    (slow: on CPU torch.compile builds the fused kernel)."""
    assert_parity(config(bias_activation_fusion=True), torch.float32, atol=1e-6, rtol=1e-5)
    assert_parity(config(torch.bfloat16, bias_activation_fusion=True), torch.bfloat16, atol=2e-2, rtol=2e-2)
