"""The seed-named conversion scripts keep their positional arguments and reject bad values by name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEEPSEEK = "toolkits/model_checkpoints_convertor/deepseek/hf2mcore_deepseek_v2_moe_convertor.sh"
QWEN_DIST = "toolkits/distributed_checkpoints_convertor/scripts/qwen2_5/run_8xH20.sh"
QWEN = "toolkits/distributed_checkpoints_convertor/hf2mcore_qwen2.5_convertor.sh"
LLAMA = "toolkits/model_checkpoints_convertor/llama/model_convertor.sh"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("script,args,message", [
    (DEEPSEEK, ["A3B", "s", "d", "2", "1", "4", "fp32", "true", "false"], "MODEL_SIZE=A3B; allowed: tiny A2.4B A21B"),
    (DEEPSEEK, ["A2.4B", "s", "d", "2", "1", "x", "fp32", "true", "false"], "EP=x; allowed: a positive integer"),
    (QWEN_DIST, ["0.5B", "s", "d", "false", "true", "int8"], "PR=int8; allowed: fp32 bf16 fp16"),
    (QWEN_DIST, ["0.5B", "s", "d", "true", "true", "bf16"], "MG2HF=true needs HF_DIR"),
    (QWEN, ["0.5B", "s", "d", "1", "1", "bf16", "yes", "true", "h"], "USE_TE=yes; allowed: true false"),
    (LLAMA, ["/m", "s", "d", "1", "1", "llama-8b", "0", "false"], "MODEL_NAME=llama-8b; allowed: llama-tiny llama-7b"),
    (LLAMA, ["/m", "s", "d", "1", "1", "llama-7b", "293", "false"], "EXTRA_VOCAB_SIZE=293; allowed: 0"),
    (LLAMA, ["/m", "s"], "usage:"),
])
def test_bad_values_name_the_allowed_ones(script, args, message):
    result = run(script, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("script,args", [
    (QWEN_DIST, ["0.5B", "{src}", "{dst}", "false", "true", "bf16"]),
    (LLAMA, ["/m", "{src}", "{dst}", "2", "1", "llama-7b", "0", "false"]),
    # the CPU size every recipe runs at is accepted too (the wrappers refused it)
    (QWEN_DIST, ["tiny", "{src}", "{dst}", "false", "true", "bf16"]),
    (QWEN, ["tiny", "{src}", "{dst}", "1", "1", "fp32", "false", "false"]),
    (DEEPSEEK, ["tiny", "{src}", "{dst}", "2", "1", "4", "fp32", "true", "false"]),
    (LLAMA, ["/m", "{src}", "{dst}", "1", "1", "llama-tiny", "0", "false"]),
])
def test_valid_values_reach_the_converter(tmp_path, script, args):
    src, dst = tmp_path / "no-such-checkpoint", tmp_path / "out"
    result = run(script, *[a.format(src=src, dst=dst) for a in args])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {src}"), result.stderr[-2000:]
    assert not dst.exists()


WRAPPERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "toolkits").rglob("*.sh") if p.name != "_common.sh")


@pytest.mark.parametrize("script", WRAPPERS)
def test_every_toolkit_wrapper_starts_under_sh(tmp_path, script):
    """The seeds call the wrappers with `sh` (dash): the shared prelude re-execs them in bash from any cwd."""
    result = subprocess.run(["sh", str(ROOT / script)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "usage: " in result.stderr, result.stderr
    assert "not found" not in result.stderr and "Syntax error" not in result.stderr


@pytest.mark.parametrize("script,args,expected", [
    (DEEPSEEK, ["A2.4B", "{src}", "{dst}", "2", "1", "4", "bf16", "true", "false"],
     "convert hf2mcore --model deepseek_v2 --size A2.4B --hf {src} --mcore {dst} --tp 2 --pp 1 --ep 4 --dtype bf16 "
     "--format torch_dist --use-te"),
    (QWEN_DIST, ["0.5B", "{src}", "{dst}", "true", "true", "bf16", "{src}"],
     "convert mcore2hf --model qwen2_5 --size 0.5B --mcore {src} --hf {dst} --source-hf {src} --dtype bf16"),
    (LLAMA, ["/m", "{src}", "{dst}", "1", "1", "llama-7b", "0", "false"],
     "convert hf2mcore --model llama2 --size 7B --hf {src} --mcore {dst} --tp 1 --pp 1 --format legacy"),
])
def test_dry_run_prints_the_command_and_refuses_a_missing_source(tmp_path, script, args, expected):
    """The converter wrappers had no DRY_RUN: the conversion's command was seen only by running it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    env = {**os.environ, "DRY_RUN": "1"}
    result = subprocess.run(["bash", script, *[a.format(src=src, dst=dst) for a in args]], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(expected.format(src=src, dst=dst)) and not dst.exists()
    src.rmdir()
    result = subprocess.run(["bash", script, *[a.format(src=src, dst=dst) for a in args]], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {src}: no such checkpoint directory"
