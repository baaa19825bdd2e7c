"""Evaluation: the shipped pai_tiny_mc task, local cmmlu/ceval layouts and their error messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pai_patch.evaluation import local_data, runner, tiny_mc

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "pai_patch" / "assets" / "tokenizer"


def save_tiny_hf(out: Path, family: str = "qwen2_5") -> Path:
    """A randomly initialised tiny HF checkpoint with the shipped tokenizer next to it."""
    import torch
    import transformers

    from pai_patch.models import get_family

    fam = get_family(family)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(fam.hf_config(fam.size("tiny"))).save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out)
    return out


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


def fake_cmmlu(root: Path, subjects: list[str]) -> None:
    for split in ("test", "dev"):
        for s in subjects:
            write_csv(root / "cmmlu" / split / f"{s}.csv", ",Question,A,B,C,D,Answer",
                      ['0,"中国的首都是哪里？",北京,东京,巴黎,罗马,A', '1,"一加一等于几？",一,二,三,四,B'])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny")


def test_tiny_mc_file_matches_its_builder(tmp_path: Path) -> None:
    rebuilt = tiny_mc.build(dst=tmp_path / "mc.jsonl")
    assert rebuilt.read_bytes() == tiny_mc.TASK_DATA.read_bytes()
    rows = [json.loads(line) for line in tiny_mc.TASK_DATA.read_text(encoding="utf-8").splitlines()]
    sft = json.loads(tiny_mc.SFT_VALID.read_text(encoding="utf-8"))
    assert len(rows) == len(sft)
    for row, rec in zip(rows, sft):
        assert row["choices"][row["answer"]] == rec["output"]
        assert sorted(row["choices"]) == sorted([rec["output"], *rec["choices"]])
    assert len({r["answer"] for r in rows}) == 4  # the right answer is not always in one position


def test_tiny_mc_rejects_record_without_choices() -> None:
    with pytest.raises(ValueError, match=r"valid.json: record 1 needs 'output' and 3 wrong 'choices'"):
        tiny_mc.mc_rows([{"instruction": "q", "output": "a", "choices": ["b", "c", "d"]},
                         {"instruction": "q", "output": "a", "choices": ["b"]}], "valid.json")


def test_cmmlu_local_configs_point_at_csvs(tmp_path: Path) -> None:
    fake_cmmlu(tmp_path, ["agronomy"])
    (cfg,) = local_data.local_task_configs("cmmlu_agronomy", tmp_path)
    assert cfg["dataset_path"] == "csv" and "dataset_name" not in cfg
    assert cfg["dataset_kwargs"]["data_files"] == {"test": str(tmp_path / "cmmlu/test/agronomy.csv"),
                                                   "dev": str(tmp_path / "cmmlu/dev/agronomy.csv")}
    assert cfg["doc_to_text"].startswith("{{Question.strip()}}")  # lm-eval's own prompt is kept


def test_ceval_layout_and_missing_subjects_named(tmp_path: Path) -> None:
    write_csv(tmp_path / "ceval" / "val" / "law_val.csv", "id,question,A,B,C,D,answer", ["0,q,a,b,c,d,A"])
    (cfg,) = local_data.local_task_configs("ceval-valid_law", tmp_path)
    assert cfg["validation_split"] == "val" and "fewshot_split" not in cfg
    with pytest.raises(FileNotFoundError, match=r"ceval-valid: 51 of 52 subjects missing under .*ceval/val: "
                                                r"accountant_val.csv"):
        local_data.local_task_configs("ceval-valid", tmp_path)


@pytest.mark.parametrize("data_dir, message", [
    (None, r"cmmlu needs its dataset and the hub is offline: extract cmmlu.tgz and pass --data-dir"),
    ("empty", r"cmmlu: no cmmlu/test/<subject>.csv .* under .*empty"),
])
def test_missing_dataset_says_what_is_missing(tmp_path: Path, data_dir: str | None, message: str) -> None:
    if data_dir:
        (tmp_path / data_dir).mkdir()
    with pytest.raises(FileNotFoundError, match=message):
        runner.task_configs(["cmmlu"], tmp_path / data_dir if data_dir else None)


def test_not_an_hf_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config.json — expected an HF checkpoint"):
        runner.evaluate(tmp_path, ["pai_tiny_mc"])


def test_evaluate_tiny_mc_and_local_cmmlu_subject(hf_dir: Path, tmp_path: Path) -> None:
    fake_cmmlu(tmp_path / "data", ["agronomy"])
    out = tmp_path / "eval.json"
    scores = runner.evaluate(hf_dir, ["pai_tiny_mc", "cmmlu_agronomy"], data_dir=tmp_path / "data", limit=12,
                             batch_size=4, output=out)
    assert set(scores) == {"pai_tiny_mc/acc", "pai_tiny_mc/acc_norm", "cmmlu_agronomy/acc", "cmmlu_agronomy/acc_norm"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["scores"] == scores
    assert report["n-samples"]["pai_tiny_mc"]["effective"] == 12
    assert report["n-samples"]["cmmlu_agronomy"]["effective"] == 2


@pytest.mark.slow
def test_cli_full_cmmlu_group_offline(hf_dir: Path, tmp_path: Path) -> None:
    names = [cfg["dataset_name"] for cfg in local_data.subjects(local_data.BENCHMARKS["cmmlu"]).values()]
    fake_cmmlu(tmp_path / "data", names)
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "pai_patch", "eval", "--hf", str(hf_dir), "--tasks", "cmmlu",
                           "--data-dir", str(tmp_path / "data"), "--limit", "1", "--output", str(out)],
                          capture_output=True, text=True, cwd=REPO, env={**_env(), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["scores"]) == {"cmmlu/acc", "cmmlu/acc_norm"}
    assert sum(1 for t in report["n-samples"] if t.startswith("cmmlu_")) == len(names)


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}
