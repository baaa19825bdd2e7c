"""Context parallelism (CP) without Transformer Engine: the same numbers as one process.

``SDPACoreAttention`` all-gathers keys and values over the CP group and masks with the
local queries' global positions (megatron's load-balanced layout: rank r holds chunks r and
2*CP-1-r).  The fast tests replay that on one process with the gather done by hand; the
slow ones run it under torchrun: tiny Qwen2.5 trains at CP=2 with the single-process
losses, and tiny DeepSeek-V2 (MLA, K and V of different widths; the MoE auxiliary loss) and
Qwen2.5 with packed sequences give the CP=1 logits and gradients.  Run as a script under
torchrun for that check: ``torchrun --nproc_per_node 2 tests/test_train_cp.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pai_patch.models.attention import attend, cp_positions, cp_to_sequence_order, packed_causal_mask
from pai_patch.models.base import Runtime
from tests.conftest import losses, max_loss_diff, report_line, run_torchrun_script, train_from_start

SEQ = 24
PACKED_CU = torch.tensor([0, 7, 16, 21], dtype=torch.int32)  # three samples, then three padding positions


def _full_and_cp(cp: int, *, heads: int, kv_heads: int, dk: int, dv: int, cu_seqlens: torch.Tensor | None):
    """Outputs and input gradients of full attention and of CP ranks simulated one by one."""
    gen = torch.Generator().manual_seed(cp)
    q, k, v = (torch.randn(SEQ, 2, h, d, generator=gen, dtype=torch.float64, requires_grad=True)
               for h, d in ((heads, dk), (kv_heads, dk), (kv_heads, dv)))
    weight = torch.randn(SEQ, 2, heads * dv, generator=gen, dtype=torch.float64)
    full = attend(q, k, v, causal=True, cu_seqlens=cu_seqlens)
    expected_grads = torch.autograd.grad((full * weight).sum(), (q, k, v))

    ranks = [cp_positions(SEQ // cp, cp, r) for r in range(cp)]
    # what the all-gather returns: every rank's local keys/values, rank by rank
    k_all, v_all = (cp_to_sequence_order(torch.cat([t[pos] for pos in ranks]), cp) for t in (k, v))
    outputs = [attend(q[pos], k_all, v_all, causal=True, cu_seqlens=cu_seqlens, query_positions=pos)
               for pos in ranks]
    loss = sum((out * weight[pos]).sum() for out, pos in zip(outputs, ranks))
    grads = torch.autograd.grad(loss, (q, k, v))  # k/v: summed over ranks, as the reduce-scatter does
    got = torch.empty_like(full)
    for out, pos in zip(outputs, ranks):
        got[pos] = out
    return full, got, expected_grads, grads


@pytest.mark.parametrize("cp", [2, 3])
@pytest.mark.parametrize("shape", [dict(heads=4, kv_heads=2, dk=8, dv=8), dict(heads=4, kv_heads=4, dk=12, dv=8)],
                         ids=["gqa", "mla-widths"])
@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_cp_attention_equals_full_attention(cp: int, shape: dict[str, int], packed: bool) -> None:
    full, got, expected_grads, grads = _full_and_cp(cp, **shape, cu_seqlens=PACKED_CU if packed else None)
    torch.testing.assert_close(got, full, rtol=0, atol=1e-12)
    for name, want, have in zip("qkv", expected_grads, grads):
        torch.testing.assert_close(have, want, rtol=0, atol=1e-12, msg=f"d{name} differs")


def test_cp_layout_positions() -> None:
    assert cp_positions(4, 2, 0).tolist() == [0, 1, 6, 7]
    assert cp_positions(4, 2, 1).tolist() == [2, 3, 4, 5]
    gathered = torch.cat([cp_positions(4, 2, r) for r in range(2)])
    assert cp_to_sequence_order(gathered, 2).tolist() == list(range(8))
    with pytest.raises(ValueError, match="two equal chunks"):
        cp_positions(5, 2, 0)


def test_packed_mask_rows_for_cp_queries() -> None:
    mask = packed_causal_mask(PACKED_CU, SEQ)
    assert mask[7, :7].sum() == 0 and mask[7, 7]  # a sample starts: nothing before it is visible
    assert mask[22, 21] and not mask[22, 20]  # padding is its own trailing segment


def _packed_batch(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """A packed micro-batch as the SFT dataset yields it (``cu_seqlens`` padded with the used length)."""
    cu = torch.full((1, SEQ + 1), int(PACKED_CU[-1]), dtype=torch.int32)
    cu[0, :len(PACKED_CU)] = PACKED_CU
    return {"tokens": tokens, "labels": tokens.roll(-1, dims=1), "loss_mask": torch.ones(1, SEQ),
            "position_ids": torch.arange(SEQ).unsqueeze(0), "cu_seqlens": cu}


def test_packed_sample_computes_as_if_alone() -> None:
    """The forward step's packing: a sample's per-token losses are those of the sample fed alone."""
    from pai_patch.models import get_family
    from pai_patch.parallel import model_parallel
    from pai_patch.training.loop import _forward_step

    family, rt = get_family("qwen2_5"), Runtime(seq_length=SEQ)
    tokens = torch.randint(0, 1000, (1, SEQ), generator=torch.Generator().manual_seed(2))
    batch = _packed_batch(tokens)
    with model_parallel(rt), torch.no_grad():
        model = family.build(family.size("tiny"), rt).eval()
        packed, _ = _forward_step(iter([batch]), model)
        second = slice(int(PACKED_CU[1]), int(PACKED_CU[2]))
        alone = model(tokens[:, second], torch.arange(9).unsqueeze(0), None, labels=batch["labels"][:, second])
    torch.testing.assert_close(packed[:, second], alone, rtol=0, atol=1e-5)


def test_packing_with_mla_is_a_clear_error() -> None:
    from pai_patch.models import get_family
    from pai_patch.parallel import model_parallel
    from pai_patch.training.loop import _forward_step

    family, rt = get_family("deepseek_v2"), Runtime(seq_length=SEQ)
    with model_parallel(rt), pytest.raises(ValueError, match="data.pack=true: .* multi-latent attention"):
        _forward_step(iter([_packed_batch(torch.zeros(1, SEQ, dtype=torch.long))]),
                      family.build(family.size("tiny"), rt))


@pytest.mark.slow
@pytest.mark.dist
def test_cp2_training_matches_single_process(layout_start: Path, corpus_prefix: str,
                                             layout_reference: dict[int, float], tmp_path: Path) -> None:
    train_from_start(layout_start, corpus_prefix, tmp_path, "parallel.cp=2", nproc=2)
    assert max_loss_diff(layout_reference, losses(tmp_path)) < 1e-5


@pytest.mark.slow
@pytest.mark.dist
def test_cp2_logits_and_gradients_equal_cp1() -> None:
    stdout = run_torchrun_script(__file__)
    diffs = {" ".join(line.split()[1:5]): float(line.split()[-1])
             for line in stdout.splitlines() if line.startswith("MAXDIFF")}
    assert sorted(diffs) == [f"{case} {rank} {what}" for case in sorted(CASES) for rank in "01"
                             for what in ("gradients", "logits")], stdout
    assert max(diffs.values()) < 1e-5, diffs


#: DeepSeek-V2: MLA and the MoE auxiliary loss; Qwen2.5: GQA and packed sequences
CASES = {"deepseek_v2 causal": ("deepseek_v2", False), "qwen2_5 packed": ("qwen2_5", True)}


def _cp2_vs_cp1(family_name: str, packed: bool) -> dict[str, float]:
    """One torchrun rank: tiny-model logits and loss gradients at CP=2 against the same weights at CP=1.

    Gradients are summed over the CP group (as DDP's DP x CP reduction does) and compared
    relative to each parameter's largest CP=1 gradient.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.packed_seq_params import PackedSeqParams

    from pai_patch.models import get_family
    from pai_patch.parallel import model_parallel
    from pai_patch.training.data import batch_on_this_cp_rank

    family = get_family(family_name)
    size = family.size("tiny")
    tokens = torch.randint(0, size.vocab_size, (2 - packed, SEQ), generator=torch.Generator().manual_seed(1))
    batch = {"tokens": tokens, "position_ids": torch.arange(SEQ).expand_as(tokens), "labels": tokens.roll(-1, 1),
             "loss_mask": torch.ones(tokens.shape)}
    params = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=PACKED_CU, cu_seqlens_kv=PACKED_CU,
                             max_seqlen_q=SEQ, max_seqlen_kv=SEQ) if packed else None

    def run(rt: Runtime, state: dict | None) -> tuple[dict, torch.Tensor, dict[str, torch.Tensor]]:
        with model_parallel(rt):
            config = family.transformer_config(size, rt)
            config.calculate_per_token_loss = True  # as the trainer: MoE aux-loss gradients scale by tokens
            model = family.build(size, rt, config=config)
            if state is not None:
                model.load_state_dict(state)
            local = batch_on_this_cp_rank(batch)
            with torch.no_grad():
                logits = model(local["tokens"], local["position_ids"], None, packed_seq_params=params)
            model(local["tokens"], local["position_ids"], None, labels=local["labels"],
                  packed_seq_params=params).sum().backward()
            grads = {name: p.grad for name, p in model.named_parameters()}
            for grad in grads.values():
                dist.all_reduce(grad, group=parallel_state.get_context_parallel_group())
            return model.state_dict(), logits, grads

    torch.manual_seed(0)
    state, expected_logits, expected_grads = run(Runtime(seq_length=SEQ), None)
    _, logits, grads = run(Runtime(cp=2, seq_length=SEQ), state)
    positions = cp_positions(SEQ // 2, 2, int(os.environ["RANK"]))  # two ranks, both in one CP group
    return {"logits": (logits - expected_logits[:, positions]).abs().max().item(),
            "gradients": max(((grads[n] - g).abs().max() / g.abs().max()).item() for n, g in expected_grads.items())}


if __name__ == "__main__":
    from pai_patch.parallel import init_process_group

    init_process_group()  # joined once: each model_parallel() above then leaves the group alone
    for case, (family_name, packed) in CASES.items():
        for what, diff in _cp2_vs_cp1(family_name, packed).items():
            report_line("MAXDIFF", case, os.environ["RANK"], what, diff)
