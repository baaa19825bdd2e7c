"""The eval report (measured vs published) and the published figures the recipes carry."""

from __future__ import annotations

import json

import pytest

from pai_patch.recipes.resolve import available, load_recipe
from pai_patch.reproduce.report import compare, write_report


@pytest.fixture
def recipe():
    r = load_recipe("deepseek_v2", ["size=A2.4B"])
    r.eval.tolerance = 0.02
    r.eval.published = {
        "cmmlu/acc": {"value": 0.643, "source": "DeepSeek-V2 card", "setting": "5-shot"},
        "ceval-valid/acc": {"value": 0.603, "source": "DeepSeek-V2 card"},
        "mmlu/acc": 0.583,  # a bare number is accepted too; this run does not measure it
    }
    return r


SCORES = {"cmmlu/acc": 0.655, "ceval-valid/acc": 0.55, "pai_tiny_mc/acc": 0.31}


def test_rows_say_which_published_results_reproduced(recipe):
    rows = {r["metric"]: r for r in compare(recipe, SCORES)}
    assert rows["cmmlu/acc"]["status"] == "reproduced"
    assert rows["cmmlu/acc"]["diff"] == pytest.approx(0.012)
    assert rows["ceval-valid/acc"]["status"] == "not reproduced"
    assert rows["ceval-valid/acc"]["diff"] == pytest.approx(-0.053)
    assert rows["mmlu/acc"]["status"] == "not measured" and rows["mmlu/acc"]["measured"] is None
    assert rows["pai_tiny_mc/acc"]["status"] == "no published figure" and rows["pai_tiny_mc/acc"]["diff"] is None


def test_tolerance_is_the_boundary(recipe):
    recipe.eval.tolerance = 0.06
    assert {r["status"] for r in compare(recipe, SCORES) if r["metric"].startswith("ce")} == {"reproduced"}


def test_report_files(recipe, tmp_path, capsys):
    path = write_report(recipe, SCORES, tmp_path)
    text = path.read_text()
    assert "| cmmlu/acc | 0.6550 | 0.6430 | +0.0120 | yes | 5-shot | DeepSeek-V2 card |" in text
    assert "| ceval-valid/acc | 0.5500 | 0.6030 | -0.0530 | NO |" in text
    assert "1 of 2 published results reproduced within ±0.02. 1 published result(s) not measured" in text
    assert text in capsys.readouterr().out
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["status"] for r in data["rows"]].count("reproduced") == 1
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_without_published_figures(tmp_path):
    r = load_recipe("qwen2_5")
    write_report(r, {"pai_tiny_mc/acc": 0.25}, tmp_path)
    assert "No published results for these tasks" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").is_file()


def _published_rows():
    for name in available():
        for size in load_recipe(name).sizes:
            recipe = load_recipe(name, [f"size={size}"])
            for key, entry in recipe.eval.published.items():
                yield pytest.param(recipe, key, entry, id=f"{name}-{size}-{key}")


@pytest.mark.parametrize("recipe,key,entry", list(_published_rows()))
def test_published_figures_are_well_formed(recipe, key, entry):
    """Each figure names its source and belongs to a task this size evaluates, as a 0-1 accuracy.

    The figures are for base models, scored without a chat template: so must the recipe's eval be.
    """
    task, metric = key.split("/")
    assert task in recipe.eval.tasks and metric in ("acc", "acc_norm")
    assert recipe.eval.apply_chat_template is False
    assert 0.0 < entry["value"] <= 1.0 and entry["source"]


def test_the_published_figures_we_found():
    got = {(n, s): {k: v["value"] for k, v in load_recipe(n, [f"size={s}"]).eval.published.items()}
           for n, s in [("deepseek_v2", "A2.4B"), ("deepseek_v2", "A21B"), ("llama2", "7B"), ("llama2", "13B")]}
    assert got == {("deepseek_v2", "A2.4B"): {"cmmlu/acc": 0.643, "ceval-valid/acc": 0.603},
                   ("deepseek_v2", "A21B"): {"cmmlu/acc": 0.840, "ceval-valid/acc": 0.817},
                   ("llama2", "7B"): {"cmmlu/acc": 0.318, "ceval-valid/acc": 0.325},
                   ("llama2", "13B"): {"cmmlu/acc": 0.384, "ceval-valid/acc": 0.414}}


def test_report_command_for_scores_measured_outside_the_stage(tmp_path):
    from pai_patch.reproduce.report import main

    (tmp_path / "results.json").write_text(json.dumps({"scores": {"cmmlu/acc": 0.62, "ceval-valid/acc": 0.60}}))
    assert main([str(tmp_path / "results.json"), str(tmp_path / "out"), "recipe=deepseek_v2", "size=A2.4B"]) == 1
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| cmmlu/acc | 0.6200 | 0.6430 | -0.0230 | NO |" in text
    assert "| ceval-valid/acc | 0.6000 | 0.6030 | -0.0030 | yes |" in text
    (tmp_path / "results.json").write_text(json.dumps({"scores": {"cmmlu/acc": 0.64, "ceval-valid/acc": 0.60}}))
    assert main([str(tmp_path / "results.json"), str(tmp_path / "out"), "recipe=deepseek_v2", "size=A2.4B"]) == 0


def test_header_names_the_measured_tasks_not_the_recipes(recipe, tmp_path):
    """The header said 'tasks cmmlu, ceval-valid' (the recipe's) for a run that measured only pai_tiny_mc."""
    assert "cmmlu" in recipe.eval.tasks
    header = write_report(recipe, {"pai_tiny_mc/acc": 0.25, "pai_tiny_mc/acc_norm": 0.3}, tmp_path).read_text()
    assert "Measured with lm-eval on tasks pai_tiny_mc;" in header
    assert "Measured with lm-eval on tasks (none);" in write_report(recipe, {}, tmp_path).read_text()
