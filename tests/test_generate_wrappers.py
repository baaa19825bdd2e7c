"""The seeds' shell interfaces: 19 positional args for text generation, 14 for HF + DeepSpeed training."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GEN = REPO / "toolkits" / "text_generation" / "run_text_generation_megatron_llama.sh"
HFDS = REPO / "recipes" / "llama2" / "run_ds_train_huggingface_llama.sh"


def _bash(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=REPO)


def test_generation_wrapper_needs_19_args() -> None:
    proc = _bash(GEN, "dsw", "x")
    assert proc.returncode == 2 and "(got 2 arguments)" in proc.stderr


def test_generation_wrapper_maps_args_onto_the_cli(tmp_path: Path) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"query": "hi"}\n')
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # TOP_K=10 with TOP_P=0.85: the seed's rule reaches the CLI as the positional values
    proc = _bash(GEN, "dsw", "/root/Megatron-LM", "/root/patch", str(ckpt), "tiny", "1", "1", "1024", "1024", "0",
                 "fp32", "10", "512", "32", str(prompts), str(tmp_path / "out.txt"), "0.85", "1.0", "1.2")
    assert proc.returncode == 2
    assert "MEGATRON_PATH (/root/Megatron-LM) and MEGATRON_PATCH_PATH (/root/patch) are ignored" in proc.stderr
    assert "error: --top-k 10 and --top-p 0.85: set only one of them" in proc.stderr
    proc = _bash(GEN, "dsw", "m", "p", str(ckpt), "tiny", "1", "1", "1024", "1024", "0",
                 "fp32", "10", "512", "32", str(prompts), str(tmp_path / "out.txt"), "0", "1.0", "1.2")
    assert proc.returncode == 2 and f"error: {ckpt}: no Megatron-Core checkpoint" in proc.stderr
    assert not (tmp_path / "out.txt").exists()


def test_hfds_wrapper_checks_its_switches(tmp_path: Path) -> None:
    assert "(got 0 arguments)" in _bash(HFDS).stderr
    args = ["dsw", "7B", "1", "2", "1e-5", "2048", "bf16", "2", "maybe", "t.json", "v.json", "ckpt", "2", str(tmp_path)]
    proc = _bash(HFDS, *args)
    assert proc.returncode == 2 and "GC=maybe: expected true or false" in proc.stderr
    args[8] = "true"
    proc = _bash(HFDS, *args)
    assert proc.returncode == 2 and "ckpt: no config.json" in proc.stderr


def test_generation_and_deepspeed_wrappers_have_a_dry_run(tmp_path: Path) -> None:
    """DRY_RUN=1 printed nothing and ran the job: the command is printed, exit 0, a missing checkpoint refused."""
    ckpt, missing = tmp_path / "ckpt", tmp_path / "nosuch"
    ckpt.mkdir()
    gen = ["dsw", "m", "p", str(ckpt), "tiny", "1", "1", "1024", "1024", "0", "fp32", "0", "512", "32", "in.jsonl",
           str(tmp_path / "out.txt"), "0", "1.0", "1.2"]
    hfds = ["dsw", "7B", "1", "2", "1e-5", "2048", "bf16", "2", "true", "t.json", "v.json", str(ckpt), "2",
            str(tmp_path / "out")]
    env = {**os.environ, "DRY_RUN": "1"}
    for script, args, command in ((GEN, gen, f"-m pai_patch generate --mcore {ckpt} --family llama2 --size tiny"),
                                  (HFDS, hfds, f"-m pai_patch hf_train --model {ckpt} --train-data t.json")):
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=REPO, env=env)
        assert proc.returncode == 0 and command in proc.stdout, proc.stderr
        args[args.index(str(ckpt))] = str(missing)
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=REPO, env=env)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"error: {missing}: no such " \
                                                                                  "checkpoint directory"
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "out").exists()
