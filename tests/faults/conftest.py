"""Fixtures of the fault suite: one fork server, one tiny dataset, one reference run per configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from harness import COUNTS, REPO, Zygote, fresh_dir, outlived, train_args


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("faults")
    yield work
    # every kill above left no process behind (orphaned ranks or checkpoint writers held memory for hours)
    left = outlived(str(work), seconds=30)
    assert not left, f"processes of the fault suite outlived it: {left}"


@pytest.fixture(scope="session")
def zygote():
    server = Zygote()
    yield server
    server.close()
    # the runs it forked, and what they forked, keep its command line: found by their sessions
    left = outlived(seconds=30, sessions=server.runs)
    assert not left, f"runs forked by the fault suite's zygote outlived it: {left}"


@pytest.fixture(scope="session")
def data_prefix(work: Path) -> str:
    from pai_patch.data.pretrain import preprocess_pretrain
    from pai_patch.data.tokenizer import load_tokenizer

    prefix = work / "data" / "pt"
    prefix.parent.mkdir()
    preprocess_pretrain(str(REPO / "pai_patch/assets/corpus/pretrain.jsonl"), load_tokenizer("shipped"), str(prefix))
    return f"{prefix}_text_document"


class References:
    """Uninterrupted runs, one per configuration, made on first use and shared by the tests."""

    def __init__(self, work: Path, zygote: Zygote, data: str) -> None:
        self.work, self.zygote, self.data, self.done = work, zygote, data, {}

    def get(self, name: str, iters: int, *extra: str, torchrun: bool = False) -> Path:
        if name not in self.done:
            from harness import launch_process

            out = fresh_dir(self.work / f"ref-{name}")
            argv = train_args(out, self.data, iters, *extra)
            run = launch_process(argv, out / "log", torchrun=True) if torchrun else self.zygote.launch(argv, out / "log")
            rc = run.wait(600)
            run.kill_group()
            assert rc == 0, f"reference run {name} failed (rc {rc}):\n{run.text()[-3000:]}"
            self.done[name] = out
        return self.done[name]


@pytest.fixture(scope="session")
def references(work: Path, zygote: Zygote, data_prefix: str) -> References:
    return References(work, zygote, data_prefix)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if COUNTS.kills or COUNTS.dirs_audited:
        terminalreporter.write_line(COUNTS.summary())
        for note in COUNTS.notes:
            terminalreporter.write_line(f"  {note}")
