"""PAI-DLC multi-node launch, for real: two "nodes" on this machine share one output directory.

DLC starts the same command on every node with ``WORLD_SIZE`` = nodes, ``RANK`` = node rank and
``KUBERNETES_CONTAINER_RESOURCE_GPU`` = GPUs per node; each node's stage runner prepares the data
and the job files in the shared output directory and launches its torchrun agent, and the agents
rendezvous into one job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.dist]
ITERS = 6


def test_two_dlc_nodes_train_one_job_in_a_shared_output_directory(tmp_path: Path) -> None:
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "KUBERNETES_CONTAINER_RESOURCE_GPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pai_patch", "stage", "pretrain", "recipe=qwen2_5", "env=dlc",
               f"output={tmp_path / 'run'}", f"pretrain.train.train_iters={ITERS}"]
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, log) in enumerate(zip(nodes, logs)):
        assert node.returncode == 0, log[-3000:]
        assert f"--nproc_per_node 1 --nnodes 2 --node_rank {rank} --master_addr 127.0.0.1 --master_port {port}" in log
        assert f"done: iteration {ITERS} (finished)" in log, log[-2000:]
    out = tmp_path / "run" / "pretrain"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "loss" in m] == list(range(1, ITERS + 1))  # one job, logged once
    assert (out / "checkpoint" / f"iter_{ITERS:07d}").is_dir()
    assert (out / "checkpoint" / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
