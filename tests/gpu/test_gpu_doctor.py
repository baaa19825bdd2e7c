"""``doctor`` on a GPU: it sees the device, and the attention backend it reports is one that imports."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from pai_patch import backends
from tests.conftest import ROOT


def doctor(*switches: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "pai_patch", "doctor", "--json", "--recipe-switches", *switches],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    return out.returncode, json.loads(out.stdout)


def test_doctor_reports_this_gpu_and_an_importable_backend() -> None:
    code, report = doctor("PR=bf16", "FL=true")
    major, minor = torch.cuda.get_device_capability()
    assert code == 0 and report["problems"] == [], report["problems"]
    assert report["cuda"] and report["gpus"][0] == {"name": torch.cuda.get_device_name(0),
                                                    "capability": f"sm_{major}{minor}"}
    te = backends.importable("transformer_engine")
    assert (report["packages"]["transformer-engine"] is not None) == te
    chosen = report["selected"]
    assert chosen["use_te"] == te
    if not te:
        assert chosen["attention"] == "sdpa" and "Transformer Engine does not import" in chosen["reason"]
    if chosen["attention"] == "fa3":
        assert (major, minor) == backends.HOPPER and report["packages"]["FA3 (flash_attn_interface)"]
    if chosen["attention"] == "te-flash":
        assert report["packages"]["flash-attn 2"]


def test_doctor_rejects_fp8_exactly_when_te_is_missing() -> None:
    code, report = doctor("PR=fp8")
    fp8_capable = torch.cuda.get_device_capability() >= (8, 9)
    if backends.importable("transformer_engine") and fp8_capable:
        assert code == 0, report["problems"]
    else:
        assert code == 1 and "PR=fp8 needs" in report["problems"][0]
