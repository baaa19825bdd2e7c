"""Logit parity: our megatron-core DeepSeek-V2 vs transformers' ``DeepseekV2ForCausalLM``.

Both get the same random weights, copied through the family's declarative weight
mapping (so the mapping is checked too).  Run as a script under torchrun for the
expert-parallel case: ``torchrun --nproc_per_node 2 tests/test_deepseek_v2_parity.py``.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from pai_patch.convert.mapping import Fuse, Scope, WeightMapping
from pai_patch.models import get_family
from pai_patch.models.base import Runtime, padded_vocab_size
from pai_patch.models.deepseek_v2 import DeepseekV2Size
from tests.conftest import report_line, run_torchrun_script

TOLERANCE = 1e-4


def variants() -> dict[str, DeepseekV2Size]:
    """``tiny`` (V2-Lite's shape) and a variant with A21B's low-rank Q, routing scale and groups."""
    tiny = get_family("deepseek_v2").size("tiny")
    return {"tiny": tiny,
            "tiny-q_lora-grouped": dataclasses.replace(tiny, name="tiny-q_lora-grouped", q_lora_rank=48,
                                                      routed_scaling_factor=16.0, num_experts=16, moe_topk=4,
                                                      num_groups=4, group_topk=2)}


def hf_model(size: DeepseekV2Size, seed: int = 0) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = get_family("deepseek_v2").hf_config(size)
    config.initializer_range = 0.1  # larger than default so routing and attention are far from uniform
    model = transformers.DeepseekV2ForCausalLM(config).eval()
    with torch.no_grad():  # norms start at one; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def hf_disk_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under their on-disk names (per-expert, as save_pretrained writes them)."""
    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e, w in enumerate(t):
                gate, up = w.chunk(2, dim=0)
                sd[f"{prefix}{e}.gate_proj.weight"], sd[f"{prefix}{e}.up_proj.weight"] = gate, up
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e, w in enumerate(t):
                sd[f"{prefix}{e}.down_proj.weight"] = w
        else:
            sd[name] = t
    return sd


def mcore_state(mapping: WeightMapping, size: DeepseekV2Size, hf: dict[str, torch.Tensor],
                ep_rank: int = 0, ep_size: int = 1) -> dict[str, torch.Tensor]:
    """Megatron tensors (TP=PP=1, this EP rank's experts) built from HF ones by the mapping's rules."""
    out = {}
    local_experts = mapping.num_experts(size) // ep_size

    def build(rule, **names: int) -> None:  # noqa: ANN001
        parts = [hf[n.format(**names)] for n in rule.hf]
        assert rule.fuse in (Fuse.NONE, Fuse.CONCAT), rule.fuse
        tensor = torch.cat(parts, dim=0) if rule.fuse is Fuse.CONCAT else parts[0]
        if rule.split.value == "vocab":
            tensor = torch.nn.functional.pad(tensor, (0, 0, 0, padded_vocab_size(size.vocab_size) - tensor.shape[0]))
        local = dict(names)
        if "expert" in names:
            local["expert"] = names["expert"] - ep_rank * local_experts
        out[rule.mcore.format(**local)] = tensor

    for rule in mapping.rules:
        if rule.scope is Scope.MODEL:
            if rule.applies(size):
                build(rule)
            continue
        for layer in range(size.num_layers):
            if not rule.applies(size, layer):
                continue
            if rule.scope is Scope.LAYER:
                build(rule, layer=layer)
            else:
                for e in range(ep_rank * local_experts, (ep_rank + 1) * local_experts):
                    build(rule, layer=layer, expert=e)
    return out


def max_logit_diff(size: DeepseekV2Size, rt: Runtime) -> float:
    """Build both models with the same weights and compare logits on a fixed batch."""
    from megatron.core import parallel_state

    from pai_patch.parallel import model_parallel

    family = get_family("deepseek_v2")
    hf = hf_model(size)
    tokens = torch.randint(0, size.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    with model_parallel(rt):
        model = family.build(size, rt).eval()
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        state = mcore_state(family.weight_mapping(), size, hf_disk_state(hf), ep_rank, rt.ep)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and not [k for k in missing if not k.endswith("_extra_state")], (missing, unexpected)
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        with torch.no_grad():
            logits = model(tokens, positions, None)
    return (logits[..., : size.vocab_size] - expected).abs().max().item()


@pytest.mark.parametrize("name", list(variants()))
def test_logits_match_transformers(name: str) -> None:
    diff = max_logit_diff(variants()[name], Runtime(seq_length=24))
    assert diff < TOLERANCE, f"{name}: max |logit diff| {diff:.3e}"



@pytest.mark.slow
@pytest.mark.dist
def test_logits_match_transformers_expert_parallel() -> None:
    stdout = run_torchrun_script(__file__)
    diffs = [float(line.split()[-1]) for line in stdout.splitlines() if line.startswith("MAXDIFF")]
    assert len(diffs) == 2 * len(variants()), stdout
    assert max(diffs) < TOLERANCE, diffs


if __name__ == "__main__":  # one torchrun rank: EP=2 over the routed experts
    from pai_patch.parallel import init_process_group

    init_process_group()  # joined once: each model_parallel() below then leaves the group alone
    for variant in variants().values():
        report_line("MAXDIFF", variant.name, os.environ["RANK"], max_logit_diff(variant, Runtime(ep=2, seq_length=24)))
