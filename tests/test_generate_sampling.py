"""Generation: sampling settings, prompt files, and what bad input reports (nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pai_patch.generation.prompts import read_prompts
from pai_patch.generation.sampling import (SamplingParams, apply_repetition_penalty, choose_token, filter_top_k,
                                           filter_top_p)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k=10, top_p=0.9), r"--top-k 10 and --top-p 0.9: set only one of them"),
    (dict(temperature=0.0), r"--temperature 0.0: expected a value > 0"),
    (dict(temperature=-1.0), r"--temperature -1.0: expected a value > 0"),
    (dict(repetition_penalty=0.9), r"--repetition-penalty 0.9: expected >= 1.0"),
    (dict(top_k=0, top_p=1.5), r"--top-p 1.5: expected a value in \[0, 1\]"),
    (dict(top_k=-1), r"--top-k -1"),
    (dict(max_new_tokens=0), r"--max-new-tokens 0: expected >= 1"),
])
def test_sampling_settings_out_of_range(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [True, True, False, False, False]
    probs = logits.softmax(-1)  # [0.64, 0.23, 0.09, ...]
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [True, False, False, False, False]
    assert torch.isfinite(filter_top_p(logits, float(probs[0] + 0.01))).tolist() == [True, True, False, False, False]


def test_repetition_penalty_is_transformers_rule() -> None:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[0, 1, 1]])
    expected = RepetitionPenaltyLogitsProcessor(1.5)(seen, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits[0], seen[0], 1.5), expected[0])


def test_sampling_is_seeded_and_stays_in_top_k() -> None:
    logits = torch.linspace(0, 1, 50)
    params = SamplingParams(top_k=5, top_p=0.0, temperature=2.0)
    draw = lambda: [choose_token(logits, [], params, g) for g in [torch.Generator().manual_seed(7)] for _ in range(30)]  # noqa: E731
    first = draw()
    assert first == draw()
    assert set(first) <= {45, 46, 47, 48, 49} and len(set(first)) > 1


def test_prompt_keys_and_malformed_line(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"query": "a"}\n\n{"prompt": "b"}\n{"text": "c"}\n', encoding="utf-8")
    assert read_prompts(good) == ["a", "b", "c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": "b"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON"):
        read_prompts(bad)
    bad.write_text('{"prompt": "a"}\n{"question": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:2: expected a non-empty string under one of query, prompt, text"):
        read_prompts(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "pai_patch", "generate", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("case", ["bad_prompt", "no_checkpoint", "bad_sampling"])
def test_cli_bad_input_one_line_error_nothing_written(tmp_path: Path, case: str) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hello"}\n' if case != "bad_prompt" else '{"prompt": "hello"}\nnot json\n')
    out = tmp_path / "out.jsonl"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    extra = ["--top-k", "5", "--top-p", "0.8"] if case == "bad_sampling" else []
    proc = _cli("--mcore", str(ckpt), "--family", "llama2", "--input", str(prompts), "--output", str(out), *extra)
    assert proc.returncode == 2
    expected = {"bad_prompt": f"{prompts}:2: not valid JSON", "no_checkpoint": f"{ckpt}: no Megatron-Core checkpoint",
                "bad_sampling": "--top-k 5 and --top-p 0.8"}[case]
    assert expected in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists() and not any(p.name.startswith(".out.jsonl") for p in tmp_path.iterdir())
