"""Logit parity: the Megatron-Core model loaded from a converted checkpoint matches transformers.

In one process at TP=PP=1, and at TP=2 / PP=2 under ``torchrun --nproc_per_node 2`` (gloo);
the 2-process runs also save a trainer-style torch_dist checkpoint at their layout, which
must load back at TP=1 and export to HF bit-exactly.  Run as a script, this file is the
torchrun worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pai_patch.models import get_family
from pai_patch.models.base import ModelSize, Runtime
from tests.conftest import dense_families, run_torchrun_script

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parents[1]


def convert(family_name: str, hf: Path, out: Path, **layout: object) -> Path:
    from pai_patch.convert.engine import hf_to_mcore
    from pai_patch.parallel import model_parallel

    with model_parallel():
        hf_to_mcore(get_family(family_name), None, hf, out, **layout)
    return out


def in_process_diff(family_name: str, hf: Path, ckpt: Path, size: ModelSize | None = None) -> float:
    from pai_patch.convert.io import load_model_checkpoint
    from pai_patch.convert.verify import hf_logits, megatron_logits, sample_tokens
    from pai_patch.parallel import model_parallel

    family = get_family(family_name)
    size = size or family.size("tiny")
    tokens = sample_tokens(size.vocab_size)
    with model_parallel():
        model = family.build(size, Runtime(seq_length=tokens.shape[1])).eval()
        load_model_checkpoint([model], str(ckpt))
        ours = megatron_logits(model, tokens)[..., : size.vocab_size]
    return float((ours - hf_logits(hf, tokens)).abs().max())


@pytest.mark.parametrize("family_name", dense_families())
@pytest.mark.parametrize("fmt", ["torch_dist", "legacy"])
def test_logits_match_transformers_in_process(tmp_path, family_name, fmt):
    from test_convert_roundtrip import make_hf

    hf = make_hf(family_name, tmp_path / "hf")
    assert in_process_diff(family_name, hf, convert(family_name, hf, tmp_path / "mc", fmt=fmt)) < TOLERANCE


def _verified_legacy_conversion(family: str, tmp_path):  # noqa: ANN202
    """(hf dir, the legacy rank file, a rerun of `convert verify`) after checking that `convert verify` passes."""
    from test_convert_roundtrip import make_hf

    hf = make_hf(family, tmp_path / "hf")
    convert(family, hf, tmp_path / "mc", fmt="legacy")
    cmd = [sys.executable, "-m", "pai_patch", "convert", "verify", "--hf", str(hf), "--mcore", str(tmp_path / "mc")]

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    good = verify()
    assert good.returncode == 0 and "within tolerance" in good.stdout, good.stderr[-2000:]
    return hf, tmp_path / "mc" / "release" / "mp_rank_00" / "model_optim_rng.pt", verify


def test_verify_command_and_negative_control(tmp_path):
    """`convert verify` passes on a good conversion and fails when two query heads are swapped."""

    _, path, verify = _verified_legacy_conversion("llama2", tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    qkv = checkpoint["model"]["decoder.layers.1.self_attention.linear_qkv.weight"]
    qkv[:32], qkv[96:128] = qkv[96:128].clone(), qkv[:32].clone()  # heads of two query groups
    torch.save(checkpoint, path)
    (tmp_path / "mc" / "release" / "COMPLETE.json").unlink()  # edited as by another tool, which writes no marker
    bad = verify()
    assert bad.returncode == 1 and "NOT within" in bad.stdout


def test_qk_norms_are_converted(tmp_path):
    """Qwen3's per-head q/k RMSNorm weights reach the model: `convert verify` passes, and resetting them
    to ones breaks parity."""

    hf, path, _ = _verified_legacy_conversion("qwen3", tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    norms = [k for k in checkpoint["model"] if k.endswith(("q_layernorm.weight", "k_layernorm.weight"))]
    assert len(norms) == 2 * get_family("qwen3").size("tiny").num_layers
    for key in norms:
        checkpoint["model"][key] = torch.ones_like(checkpoint["model"][key])
    torch.save(checkpoint, path)
    (tmp_path / "mc" / "release" / "COMPLETE.json").unlink()  # edited as by another tool, which writes no marker
    assert in_process_diff("qwen3", hf, tmp_path / "mc") > 100 * TOLERANCE


def test_spec_translation_local_to_te():
    """Local-spec names in a legacy file map onto a TE model's names (and TE onto local, tested end to end)."""
    from pai_patch.convert.io import _translate

    own = {"decoder.layers.3.self_attention.linear_qkv.layer_norm_weight": None,
           "decoder.layers.3.mlp.linear_fc1.layer_norm_weight": None,
           "decoder.layers.3.mlp.linear_fc1._extra_state": None}
    state = {"decoder.layers.3.input_layernorm.weight": torch.ones(2),
             "decoder.layers.3.pre_mlp_layernorm.weight": torch.zeros(2)}
    assert sorted(_translate(state, own)) == sorted(k for k in own if "extra" not in k)


# ---- two processes ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.dist
# qwen3: head_dim != hidden / heads and q/k norms replicated over the TP ranks
@pytest.mark.parametrize("family,tp,pp", [("qwen2_5", 2, 1), ("qwen2_5", 1, 2), ("qwen3", 2, 1)])
def test_logits_and_trainer_checkpoint_under_torchrun(tmp_path, family, tp, pp):
    from test_convert_roundtrip import assert_same_tensors, make_hf, read_hf

    from pai_patch.convert.engine import mcore_to_hf
    from pai_patch.parallel import model_parallel

    hf = make_hf(family, tmp_path / "hf")
    dist_dir = convert(family, hf, tmp_path / "dist")  # written once, loaded at the run's TP/PP
    legacy_dir = convert(family, hf, tmp_path / "legacy", fmt="legacy", tp=tp, pp=pp)
    run_torchrun_script(__file__, "--family", family, "--hf", str(hf), "--dist", str(dist_dir),
                        "--legacy", str(legacy_dir),
                        "--tp", str(tp), "--pp", str(pp), "--save", str(tmp_path / "trained"),
                        "--out", str(tmp_path / "result.json"))
    diffs = json.loads((tmp_path / "result.json").read_text())
    assert set(diffs) == {"torch_dist", "legacy"} and max(diffs.values()) < TOLERANCE, diffs
    # the trainer's checkpoint (written at TP/PP=2) loads at TP=1 and exports to HF bit-exactly
    assert in_process_diff(family, hf, tmp_path / "trained") < TOLERANCE
    with model_parallel():
        mcore_to_hf(get_family(family), None, tmp_path / "trained", tmp_path / "back", hf)
    assert_same_tensors(read_hf(hf), read_hf(tmp_path / "back"))


def worker(args: argparse.Namespace) -> None:
    """One rank: load both conversions at TP/PP, compare logits, save a trainer-style checkpoint."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from pai_patch.convert.io import load_model_checkpoint
    from pai_patch.convert.verify import hf_logits, sample_tokens
    from pai_patch.parallel import model_parallel

    family = get_family(args.family)
    size = family.size("tiny")
    tokens = sample_tokens(size.vocab_size)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    rt = Runtime(tp=args.tp, pp=args.pp, seq_length=tokens.shape[1])
    with model_parallel(rt):
        stage, last = ps.get_pipeline_model_parallel_rank(), args.pp - 1
        model = family.build(size, rt, pre_process=stage == 0, post_process=stage == last).eval()
        expected = hf_logits(Path(args.hf), tokens)
        diffs = {}
        for name, ckpt in (("torch_dist", args.dist), ("legacy", args.legacy)):
            load_model_checkpoint([model], ckpt)
            with torch.no_grad():
                if stage > 0:  # receive the previous stage's hidden states
                    hidden = torch.empty(tokens.shape[1], tokens.shape[0], size.hidden_size)
                    dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
                    model.set_input_tensor(hidden)
                out = model(tokens, positions, None, runtime_gather_output=True)
                if stage < last:
                    dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
                else:
                    diffs[name] = float((out[..., : size.vocab_size] - expected).abs().max())
        iter_dir = Path(args.save) / "iter_0000007"
        if dist.get_rank() == 0:
            iter_dir.mkdir(parents=True)
        dist.barrier()
        dist_checkpointing.save({"model": model.sharded_state_dict(), "iteration": 7}, str(iter_dir))
        if dist.get_rank() == 0:
            (Path(args.save) / "latest_checkpointed_iteration.txt").write_text("7")
        if diffs and ps.get_tensor_model_parallel_rank() == 0:
            Path(args.out).write_text(json.dumps(diffs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--family", "--hf", "--dist", "--legacy", "--save", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    worker(parser.parse_args())
