"""Outputs get the permissions the user's umask gives, not mkstemp's 0600 / mkdtemp's 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from pai_patch.utils import atomic_path, write_text_atomic
from tests.conftest import CORPUS


@pytest.fixture(params=[0o022, 0o027])
def mask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dataset_and_converted_directory_follow_the_umask(tmp_path: Path, mask: int) -> None:
    from pai_patch.data.pretrain import preprocess_pretrain
    from pai_patch.data.tokenizer import load_tokenizer

    preprocess_pretrain(str(CORPUS / "pretrain.jsonl"), load_tokenizer("shipped"), tmp_path / "ds", progress=False)
    for suffix in (".bin", ".idx"):
        assert mode(tmp_path / f"ds_text_document{suffix}") == 0o666 & ~mask
    with atomic_path(tmp_path / "converted", is_dir=True) as tmp:  # what hf2mcore / mcore2hf write into
        write_text_atomic(tmp / "latest_checkpointed_iteration.txt", "release")
    assert mode(tmp_path / "converted") == 0o777 & ~mask
    assert mode(tmp_path / "converted" / "latest_checkpointed_iteration.txt") == 0o666 & ~mask
    assert os.umask(mask) == mask  # and the umask itself is left as it was
