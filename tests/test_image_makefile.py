"""docker/Makefile: the image tag follows pyproject's version, and push refuses to run without a registry."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(ROOT / "docker"), *args], capture_output=True, text=True,
                          timeout=60)


def test_tag_is_registry_pai_patch_yy_mm_from_pyproject():
    version = re.search(r'^version = "(\d+)\.(\d+)\.\d+"', (ROOT / "pyproject.toml").read_text(), re.M)
    expected = f"{version.group(1)}.{version.group(2)}"
    out = make("print-image", "REGISTRY=registry.cn-wulanchabu.aliyuncs.com/team")
    assert out.stdout.strip() == f"registry.cn-wulanchabu.aliyuncs.com/team/pai-patch:{expected}"
    assert make("print-image", "REGISTRY=").stdout.strip() == f"local/pai-patch:{expected}"


def test_push_without_registry_fails_before_docker_runs():
    out = make("push", "REGISTRY=", "DOCKER=false")
    assert out.returncode != 0 and "needs REGISTRY=" in out.stderr


def test_build_passes_the_dockerfile_and_repo_context():
    out = make("-n", "build", "REGISTRY=r", "BUILD_ARGS=--build-arg MAX_JOBS=4")
    assert f"-f {ROOT}/docker/Dockerfile" in out.stdout and out.stdout.rstrip().endswith(str(ROOT))
    assert "--build-arg MAX_JOBS=4" in out.stdout
