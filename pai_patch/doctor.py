"""``python -m pai_patch doctor``: what this environment has and what each recipe switch will use.

Run first in a new image or DSW instance: it answers "will FL=true give me FA3 here?" and
"can PR=fp8 run here?" in a second, instead of after a cluster job has started.  It exits 1
with one line per problem when the requested switches cannot work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from importlib import metadata
from typing import Any

import torch

from pai_patch import backends

#: shown name -> (distribution names to read the version from, module that must import)
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "torch": (("torch",), "torch"),
    "megatron-core": (("megatron-core", "megatron_core"), "megatron.core"),
    "transformer-engine": (("transformer-engine", "transformer_engine"), "transformer_engine"),
    "flash-attn 2": (("flash-attn", "flash_attn"), "flash_attn"),
    "FA3 (flash_attn_interface)": (("flash_attn_3", "flash-attn-3", "flashattn-hopper"), "flash_attn_interface"),
    "apex": (("apex",), "apex"),
    "deepspeed": (("deepspeed",), "deepspeed"),
    "transformers": (("transformers",), "transformers"),
    "lm-eval": (("lm_eval", "lm-eval"), "lm_eval"),
}
#: modules whose import only tests a compiled CUDA extension: importing them is cheap and the check matters
IMPORT_CHECKED = {"transformer_engine", "flash_attn", "flash_attn_interface"}
SWITCHES = {"FL": ("true", "false"), "PR": backends.PRECISIONS, "FA3": ("true", "false"), "TE": ("true", "false")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe-switches", nargs="*", default=[], metavar="KEY=VALUE",
                        help="switches to check, as in a recipe: FL=true|false PR=fp32|fp16|bf16|fp8 "
                             "FA3=true|false (require FlashAttention-3) TE=true|false (require Transformer Engine)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def parse_switches(items: list[str]) -> dict[str, str]:
    """``["FL=true", "PR=fp8"]`` -> dict, rejecting unknown keys and values with the valid ones."""
    switches: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().upper(), value.strip().lower()
        if not sep or key not in SWITCHES:
            raise ValueError(f"bad switch {item!r}: expected KEY=VALUE with KEY in {', '.join(SWITCHES)}")
        if value not in SWITCHES[key]:
            raise ValueError(f"bad switch {item!r}: {key} must be one of {', '.join(SWITCHES[key])}")
        switches[key] = value
    return switches


def package_version(dists: tuple[str, ...], module: str) -> str | None:
    """Installed version, or None when missing or (for CUDA extensions) present but not importable."""
    version = None
    for dist in dists:
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    if module in IMPORT_CHECKED:
        if not backends.importable(module):
            return None
        return version or "present"
    return version


def environment() -> dict[str, Any]:
    """Versions and devices, without importing the heavy optional stacks (DeepSpeed, lm-eval)."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append({"name": torch.cuda.get_device_name(i), "capability": f"sm_{major}{minor}"})
    return {
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "torch_cuda_build": torch.version.cuda,
        "gpus": gpus,
        "packages": {name: package_version(*spec) for name, spec in PACKAGES.items()},
    }


def attention_table() -> dict[str, dict[str, Any]]:
    """What FL=true and FL=false pick here (bf16, the recipes' default precision), with the
    ``attention_backend`` the model config then forces."""
    choices = {f"FL={str(fl).lower()}": backends.choose_backend(fl) for fl in (True, False)}
    return {fl: {**dataclasses.asdict(c), "attention_backend": c.attn_backend} for fl, c in choices.items()}


def problems_for(switches: dict[str, str]) -> list[str]:
    """One message per requested switch that cannot work on this machine."""
    problems: list[str] = []
    checks = []
    if "PR" in switches:
        checks.append(lambda: backends.check_precision(switches["PR"]))
    if switches.get("FA3") == "true":
        checks.append(backends.require_fa3)
    if switches.get("TE") == "true":
        checks.append(_require_te)
    for check in checks:
        try:
            check()
        except ValueError as err:
            problems.append(str(err))
    return problems


def _require_te() -> None:
    from pai_patch.models.base import te_available

    if not te_available():
        raise ValueError("TE=true but Transformer Engine does not import with a CUDA GPU here; "
                         "use the pai-patch image (docker/README.md) or TE=false")


def run(args: argparse.Namespace) -> int:
    switches = parse_switches(args.recipe_switches)
    report = environment()
    report["attention"] = attention_table()
    if "FL" in switches:
        report["selected"] = report["attention"][f"FL={switches['FL']}"]
    report["switches"] = switches
    report["problems"] = problems_for(switches)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if report["problems"] else 0


def render(report: dict[str, Any]) -> str:
    gpus = ", ".join(f"{g['name']} ({g['capability']})" for g in report["gpus"]) or "none"
    cuda = report["cuda"] or f"not available (torch CUDA build: {report['torch_cuda_build'] or 'none, CPU-only'})"
    lines = [f"{'python':28} {report['python']}", f"{'CUDA':28} {cuda}", f"{'GPU':28} {gpus}"]
    lines += [f"{name:28} {version or 'missing'}" for name, version in report["packages"].items()]
    lines.append("attention backend:")
    lines += [f"  {fl:10} {c['attention']:9} {c['reason']} (attention_backend={c['attention_backend']})"
              for fl, c in report["attention"].items()]
    if report["switches"]:
        lines.append("switches: " + " ".join(f"{k}={v}" for k, v in report["switches"].items()))
    lines += [f"error: {p}" for p in report["problems"]]
    if report["switches"] and not report["problems"]:
        lines.append("ok: the requested switches can run here")
    return "\n".join(lines)
