"""Turn a recipe's launch section into a command: python, torchrun (dsw) or multi-node torchrun (dlc).

PAI-DLC describes a job by node: ``WORLD_SIZE`` is the number of nodes, ``RANK`` the node
rank and ``KUBERNETES_CONTAINER_RESOURCE_GPU`` the GPUs per node — torchrun's ``--nnodes``,
``--node_rank`` and ``--nproc_per_node``.  Inside the workers torchrun then sets the usual
per-process ``WORLD_SIZE``/``RANK``.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from typing import Mapping

import torch

from pai_patch.configio import ConfigError
from pai_patch.recipes.schema import Recipe


def _smallest_world(recipe: Recipe) -> int:
    """On CPU, the fewest processes a layout needs: TP*PP*CP*DP with EP dividing DP*CP."""
    p = recipe.parallel
    dp = p.ep // math.gcd(p.ep, p.cp)
    return p.tp * p.pp * p.cp * max(dp, 1)


def nodes_and_procs(recipe: Recipe, env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    launch = recipe.launch
    if launch.env == "dlc":
        missing = [k for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR") if k not in env]
        if missing:
            raise ConfigError(f"launch.env=dlc needs the PAI-DLC environment; {', '.join(missing)} not set")
        gpus = env.get("KUBERNETES_CONTAINER_RESOURCE_GPU")
        per_node = launch.nproc_per_node or (int(gpus) if gpus else _local_procs(recipe))
        return int(env["WORLD_SIZE"]), per_node
    return 1, launch.nproc_per_node or _local_procs(recipe)


def _local_procs(recipe: Recipe) -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else _smallest_world(recipe)


def train_command(recipe: Recipe, job_file: str, env: Mapping[str, str] = os.environ) -> list[str]:
    nodes, per_node = nodes_and_procs(recipe, env)
    entry = ["-m", "pai_patch", "train", "--config", job_file]
    if nodes == 1 and per_node == 1:
        return [sys.executable, *entry]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(per_node)]
    if recipe.launch.env == "dlc":
        cmd += ["--nnodes", str(nodes), "--node_rank", env["RANK"], "--master_addr", env["MASTER_ADDR"],
                "--master_port", env.get("MASTER_PORT", str(recipe.launch.master_port))]
    else:
        cmd += ["--master_port", str(recipe.launch.master_port)]
    return cmd + entry


def dry_run() -> bool:
    return os.environ.get("DRY_RUN", "0") not in ("", "0", "false")


def run_command(cmd: list[str]) -> None:
    """Print the command (always), run it unless DRY_RUN=1, fail with its exit status."""
    print("+ " + shlex.join(cmd), flush=True)
    if dry_run():
        return
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise SystemExit(result.returncode)
