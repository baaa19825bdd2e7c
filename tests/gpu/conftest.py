"""Every test under tests/gpu is marked ``gpu`` and skipped, with the reason, where CUDA is absent.

They check on a GPU what the CPU suite cannot: bf16 training with the distributed optimizer,
the TE and local specs on one checkpoint, the backend ``doctor`` reports.  CPU CI collects
and skips them; ``make gpu-check`` (bench/device_check.sh) runs them on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
NO_GPU = "needs a CUDA GPU (torch.cuda.is_available() is false); run `make gpu-check` on a GPU machine"


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            if skip is not None:
                item.add_marker(skip)
