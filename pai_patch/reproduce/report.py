"""The eval report: measured scores against the recipe's published ones (markdown + PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pai_patch.recipes.schema import Recipe


def compare(recipe: Recipe, scores: dict[str, float]) -> list[dict[str, Any]]:
    """One row per measured metric, with the published value and whether it reproduced."""
    rows = []
    for key, value in sorted(scores.items()):
        published = recipe.eval.published.get(key)
        target = published.get("value") if isinstance(published, dict) else published
        row = {"metric": key, "measured": value, "published": target,
               "source": published.get("source", "") if isinstance(published, dict) else ""}
        if target is not None:
            row["diff"] = value - float(target)
            row["reproduced"] = abs(row["diff"]) <= recipe.eval.tolerance
        rows.append(row)
    return rows


def write_report(recipe: Recipe, scores: dict[str, float], out_dir: Path) -> Path:
    rows = compare(recipe, scores)
    lines = [f"# {recipe.recipe} {recipe.model.size}: evaluation", "",
             f"Tolerance for 'reproduced': ±{recipe.eval.tolerance}", "",
             "| metric | measured | published | diff | reproduced | source |", "|---|---|---|---|---|---|"]
    for r in rows:
        pub = "—" if r["published"] is None else f"{float(r['published']):.4f}"
        diff = "—" if "diff" not in r else f"{r['diff']:+.4f}"
        ok = "—" if "reproduced" not in r else ("yes" if r["reproduced"] else "no")
        lines.append(f"| {r['metric']} | {r['measured']:.4f} | {pub} | {diff} | {ok} | {r['source']} |")
    compared = [r for r in rows if "reproduced" in r]
    if compared:
        good = sum(r["reproduced"] for r in compared)
        lines += ["", f"{good} of {len(compared)} published results reproduced within ±{recipe.eval.tolerance}."]
    else:
        lines += ["", "No published results for these tasks at this size (see the recipe's eval.published)."]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(rows, out_dir / "report.png", f"{recipe.recipe} {recipe.model.size}")
    print("\n".join(lines))
    return path


def _plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["metric"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(names)), 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r["measured"] for r in rows], width=0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], [float(r["published"]) if r["published"] is not None else 0 for r in rows],
           width=0.4, label="published")
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
