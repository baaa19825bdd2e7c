"""Turn ``bench_gpu.json`` (from ``bench/gpu.py``) into a dated section of ``bench/RESULTS.md``.

A GPU session has minutes on the device and nothing to edit there, so the device writes
JSON and this script, run back here, renders it: date, device, software versions, the
measured matmul peak and one table row per shape.  ``--print`` only prints the section
(``bench/device_check.sh`` leaves it next to the JSON, ready to paste).

    python bench/record.py /path/to/bench_gpu.json            # append under "## GPU"
    python bench/record.py /path/to/bench_gpu.json --print    # print only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/record.py` from a checkout
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## GPU"


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def render_table(results: dict[str, Any]) -> str:
    """One markdown row per shape: what ran, how fast, and why a shape did not run.

    MFU divides by the datasheet dense peak (:mod:`pai_patch.gpus`); "of achievable" by the matmul
    peak measured on the device.

    The optimizer step is timed on its own (synchronised) and shown as its share of the step
    time; results from before gradient accumulation have no accum, global batch or share.
    """
    lines = ["| shape | layers | micro batch | accum | global batch (tokens) | recompute | precision | attention | "
             "Adam | tokens/s/GPU | TFLOP/s/GPU | MFU | of achievable | optimizer step | peak memory (GiB) | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        mfu, achievable, share = row.get("mfu"), row.get("of_achievable"), row.get("optimizer_share")
        result = row["status"] if row["status"] != "ok" else (
            f"ok, loss {row['loss_first']:.2f} → {row['loss_last']:.2f}")
        if row.get("error"):
            result += f": {row['error']}"
        lines.append(" | ".join([
            f"| {row['label']}", str(row.get("layers", "")), str(row.get("micro_batch", "")),
            str(row.get("accum", "")), _number(row.get("global_batch_tokens"), ","), str(row.get("recompute", "")),
            row.get("precision", ""), row.get("attention", ""), row.get("adam", ""),
            _number(row.get("tokens_per_s"), ",.0f"), _number(row.get("tflops"), ".1f"),
            "" if mfu is None else f"{100 * mfu:.1f}%", "" if achievable is None else f"{100 * achievable:.1f}%",
            "" if share is None else f"{1000 * row['optimizer_s']:.0f} ms, {100 * share:.1f}%",
            _number(row.get("peak_memory_gib"), ".1f"), result.replace("|", "/") + " |"]))
    return "\n".join(lines)


def render_section(results: dict[str, Any]) -> str:
    """The dated block for RESULTS.md: device, versions, protocol, table."""
    env = results["env"]
    packages = env.get("packages", {})
    versions = ", ".join(f"{name} {packages.get(name) or 'missing'}" for name in
                         ("megatron-core", "transformer-engine", "flash-attn 2", "FA3 (flash_attn_interface)"))
    peak, datasheet = env.get("matmul_peak_tflops"), env.get("datasheet_peak_tflops")
    attention = env.get("attention", {})
    return "\n".join([
        f"### {env['date']}, {env['device']}",
        "",
        f"torch {env['torch']} (CUDA {env.get('cuda') or 'none'}), python {env.get('python')}, {versions}. "
        f"Attention with FL=true: {attention.get('attention')} ({attention.get('reason')}).",
        f"MFU is over the datasheet dense bf16 peak, {_number(datasheet, '.0f') or 'n/a'} TFLOP/s; "
        f"of achievable: over the measured bf16 matmul peak (8192³, random data), {_number(peak, '.1f') or 'n/a'} "
        "TFLOP/s. "
        f"seq {results['seq']}, accum {results.get('accum', 1)} (micro batches per optimizer step), "
        f"{results['steps']} timed steps after {results['warmup']} warm-up, distributed optimizer, random tokens.",
        "",
        render_table(results),
        "",
    ])


def append_section(section: str, results_path: Path = RESULTS) -> None:
    """Put ``section`` at the end of RESULTS.md's GPU section (kept with earlier runs), atomically."""
    from pai_patch.utils import write_text_atomic

    text = results_path.read_text(encoding="utf-8") if results_path.exists() else "# Benchmark results\n"
    if SECTION + "\n" not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n"
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    end = len(text) if end == -1 else end + 1
    head = text[:end].rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    write_text_atomic(results_path, head + ("\n" + text[end:] if end < len(text) else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="bench_gpu.json written by bench/gpu.py")
    parser.add_argument("--print", action="store_true", help="print the section instead of appending it")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the RESULTS.md to append to")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.json.read_text(encoding="utf-8"))
        section = render_section(results)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {args.json}: not a bench/gpu.py result ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    if args.print:
        print(section)
        return 0
    append_section(section, args.results)
    print(f"appended {results['env']['date']}, {results['env']['device']} to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
