"""The eval report: measured scores against the recipe's published ones (markdown, JSON, PNG).

``make recipe=R eval`` ends with it.  A row *reproduced* when the measured score is within the
recipe's ``eval.tolerance`` (absolute, in the same 0-1 units as lm-eval's accuracy) of the
published figure; published figures the run did not measure are listed too, so a report never
looks complete when a task was dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pai_patch.recipes.schema import Recipe

STATUS_TEXT = {"reproduced": "yes", "not reproduced": "NO", "not measured": "not measured",
               "no published figure": "—"}


def _published(entry: Any) -> dict[str, Any]:
    """An entry is ``{value, source, setting}`` or a bare number."""
    return dict(entry) if isinstance(entry, dict) else {"value": entry}


def compare(recipe: Recipe, scores: dict[str, float]) -> list[dict[str, Any]]:
    """One row per measured or published metric, with the difference and a status."""
    tol = recipe.eval.tolerance
    rows = []
    for key in sorted(set(scores) | set(recipe.eval.published)):
        pub = _published(recipe.eval.published.get(key))
        target = None if pub.get("value") is None else float(pub["value"])
        measured = scores.get(key)
        row = {"metric": key, "measured": measured, "published": target, "source": pub.get("source", ""),
               "setting": pub.get("setting", ""), "diff": None}
        if measured is None:
            row["status"] = "not measured"
        elif target is None:
            row["status"] = "no published figure"
        else:
            row["diff"] = measured - target
            row["status"] = "reproduced" if abs(row["diff"]) <= tol else "not reproduced"
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], tolerance: float) -> str:
    compared = [r for r in rows if r["status"] in ("reproduced", "not reproduced")]
    missing = sum(r["status"] == "not measured" for r in rows)
    if not compared:
        text = "No published results for these tasks at this size (see the recipe's eval.published)."
    else:
        good = sum(r["status"] == "reproduced" for r in compared)
        text = f"{good} of {len(compared)} published results reproduced within ±{tolerance}."
    return text + (f" {missing} published result(s) not measured by this run." if missing else "")


def measured_tasks(rows: list[dict[str, Any]]) -> list[str]:
    """The tasks the scores hold (``task/metric`` keys), not the recipe's: a run may measure others (pai_tiny_mc)."""
    return list(dict.fromkeys(r["metric"].split("/")[0] for r in rows if r["measured"] is not None))


def render_markdown(recipe: Recipe, rows: list[dict[str, Any]]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    tol = recipe.eval.tolerance
    lines = [f"# {recipe.recipe} {recipe.model.size}: evaluation", "",
             f"Measured with lm-eval on tasks {', '.join(measured_tasks(rows)) or '(none)'}; a row reproduces when "
             f"|measured − published| ≤ {tol}.", "",
             "| metric | measured | published | diff | reproduced | published setting | source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {num(r['measured'], '.4f')} | {num(r['published'], '.4f')} | "
                     f"{num(r['diff'], '+.4f')} | {STATUS_TEXT[r['status']]} | {r['setting']} | {r['source']} |")
    return "\n".join(lines + ["", summary(rows, tol)]) + "\n"


def write_report(recipe: Recipe, scores: dict[str, float], out_dir: Path) -> Path:
    """``report.md``, ``report.json`` and ``report.png`` in ``out_dir``; prints the markdown."""
    from pai_patch.utils import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = compare(recipe, scores)
    text = render_markdown(recipe, rows)
    path = out_dir / "report.md"
    write_text_atomic(path, text)
    write_text_atomic(out_dir / "report.json", json.dumps(
        {"recipe": recipe.recipe, "size": recipe.model.size, "tolerance": recipe.eval.tolerance, "rows": rows,
         "summary": summary(rows, recipe.eval.tolerance)}, indent=1, ensure_ascii=False) + "\n")
    plot(rows, out_dir / "report.png", f"{recipe.recipe} {recipe.model.size}: measured vs published "
         f"(±{recipe.eval.tolerance})")
    print(text)
    return path


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    """Grouped bars per metric; the measured bar is green/red when it did/didn't reproduce."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"reproduced": "tab:green", "not reproduced": "tab:red", "no published figure": "tab:blue"}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows)), 4.0))
    for x, r in enumerate(rows):
        if r["measured"] is not None:
            ax.bar(x - 0.2, r["measured"], width=0.4, color=colors.get(r["status"], "tab:blue"))
        if r["published"] is not None:
            ax.bar(x + 0.2, r["published"], width=0.4, color="tab:gray")
        if r["diff"] is not None:
            top = max(r["measured"], r["published"])
            ax.annotate(f"{r['diff']:+.3f}", (x, top), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["metric"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:green", "tab:red", "tab:blue", "tab:gray")]
    ax.legend(handles, ["measured: reproduced", "measured: not reproduced", "measured (no published)", "published"],
              fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m pai_patch.reproduce.report RESULTS_JSON OUT_DIR recipe=R [size=S]``.

    The report for scores measured outside the recipe's eval stage — e.g. a published base
    checkpoint scored with ``pai-patch eval ... --num-fewshot 5 --output RESULTS_JSON``. Exits 1 when a
    published result did not reproduce.
    """
    import argparse
    import sys

    from pai_patch.recipes.resolve import load_recipe

    parser = argparse.ArgumentParser(prog="python -m pai_patch.reproduce.report",
                                     description=main.__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="the JSON `pai_patch eval --output` wrote (its `scores`)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("overrides", nargs="+", help="recipe=NAME [size=SIZE] [eval.tolerance=...]")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = [o.split("=", 1)[1] for o in args.overrides if o.startswith("recipe=")]
    if not names:
        raise SystemExit("error: name the recipe: recipe=NAME")
    scores = json.loads(args.results.read_text())["scores"]
    recipe = load_recipe(names[0], args.overrides)
    write_report(recipe, scores, args.out_dir)
    # like `lock check`: a script or CI job that asks whether a result reproduces gets the answer as the exit code
    return 1 if any(r["status"] == "not reproduced" for r in compare(recipe, scores)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
