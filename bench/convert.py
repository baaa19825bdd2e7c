"""Checkpoint conversion speed and memory against the I/O floor (``make bench-convert``).

Generates a random Qwen2.5-1.5B-shaped bf16 HF checkpoint (about 3 GB) under
``bench/_work/convert``, then measures, each in its own process: a plain read+write copy
of the same safetensors bytes (the I/O floor), ``convert hf2mcore`` to torch_dist at TP=1
and TP=2, and ``convert mcore2hf`` back.  Prints seconds, GB/s and peak RSS, writes them
to ``bench/RESULTS.md`` (section "Checkpoint conversion") and deletes what it generated.
Targets: within 2x of the floor, peak RSS under 25% of the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "convert"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Checkpoint conversion"
DATE, MACHINE = "2026-11-25", "2-core CPU, 24 GiB"


def generate(directory: Path, size_name: str) -> int:
    """A random bf16 HF checkpoint of a real shape, written tensor by tensor; returns its bytes."""
    import torch  # here, so that the I/O-floor process does not pay for importing it

    from pai_patch.convert.layout import groups, hf_shapes
    from pai_patch.convert.safetensors_stream import ShardedSafetensorsWriter
    from pai_patch.models import get_family

    family = get_family("qwen2_5")
    size = family.size(size_name)
    names = {n for group in groups(family.weight_mapping(), size) for item in group.items for n in item.hf_names}
    shapes = {n: s for n, s in hf_shapes(family, size).items() if n in names}
    directory.mkdir(parents=True)
    writer = ShardedSafetensorsWriter(directory, [(n, s, torch.bfloat16) for n, s in shapes.items()], 2 << 30)
    generator = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        writer.write(name, (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16))
    writer.finish()
    family.hf_config(size).to_json_file(directory / "config.json")
    for path in (ROOT / "pai_patch" / "assets" / "tokenizer").iterdir():
        shutil.copy(path, directory / path.name)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def copy_floor(source: Path, target: Path) -> None:
    """Read and write the same bytes (64 MiB at a time) and fsync: what any converter must at least do."""
    target.mkdir()
    for path in sorted(source.glob("*.safetensors")):
        with open(path, "rb") as src, open(target / path.name, "wb") as dst:
            shutil.copyfileobj(src, dst, 64 << 20)
            dst.flush()
            os.fsync(dst.fileno())


def measure(command: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of ``command`` run in a fresh measuring process."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
             "s = time.perf_counter() - t; "
             "print(json.dumps([r.returncode, s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
             "r.stderr[-3000:]]))")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=ROOT, check=True)
    code, seconds, rss, stderr = json.loads(out.stdout)
    if code:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr}")
    return seconds, rss


def write_results(lines: list[str], heading: str = SECTION) -> None:
    """Replace (or append) the ``heading`` section of bench/RESULTS.md with ``lines``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = "\n".join([heading, "", *lines]) + "\n"
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.5B", help="Qwen2.5 size row to generate (default 1.5B, ~3 GB in bf16)")
    parser.add_argument("--copy", nargs=2, type=Path, help=argparse.SUPPRESS)  # the floor, in its own process
    args = parser.parse_args()
    if args.copy:
        copy_floor(*args.copy)
        return 0
    shutil.rmtree(WORK, ignore_errors=True)
    hf = WORK / "hf"
    try:
        print(f"generating a random Qwen2.5-{args.size} bf16 checkpoint in {hf} ...", flush=True)
        total = generate(hf, args.size)
        cli = [sys.executable, "-m", "pai_patch", "convert"]
        runs = [
            ("read+write copy (I/O floor)", [sys.executable, __file__, "--copy", str(hf), str(WORK / "copy")]),
            ("hf2mcore TP=1 torch_dist", [*cli, "hf2mcore", "--model", "qwen2_5", "--hf", str(hf),
                                          "--mcore", str(WORK / "tp1"), "--tp", "1"]),
            ("hf2mcore TP=2 torch_dist", [*cli, "hf2mcore", "--model", "qwen2_5", "--hf", str(hf),
                                          "--mcore", str(WORK / "tp2"), "--tp", "2"]),
            ("mcore2hf (from TP=1)", [*cli, "mcore2hf", "--mcore", str(WORK / "tp1"), "--hf", str(WORK / "back"),
                                      "--source-hf", str(hf)]),
        ]
        rows, floor = [], None
        for name, command in runs:
            seconds, rss = measure(command)
            floor = floor or seconds
            rows.append((name, seconds, rss))
            print(f"{name:30s} {seconds:7.1f} s  {total / seconds / 1e9:5.2f} GB/s  {seconds / floor:4.1f}x floor  "
                  f"peak RSS {rss / 2**20:7.0f} MiB ({rss / total:4.0%} of checkpoint)", flush=True)
            if name.startswith("hf2mcore TP=2"):
                shutil.rmtree(WORK / "tp2")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    lines = [
        f"`make bench-convert` (`bench/convert.py`), {DATE}, {MACHINE}: a random Qwen2.5-{args.size}-shaped bf16 "
        f"HF checkpoint ({total / 1e9:.2f} GB, warm page cache), each step in its own process, process start-up "
        "and imports included. Peak RSS is the largest resident set of the process tree.",
        "",
        "| step | seconds | GB/s | vs floor | peak RSS | RSS / checkpoint |",
        "|---|---|---|---|---|---|",
        *[f"| {n} | {s:.1f} | {total / s / 1e9:.2f} | {s / floor:.1f}x | {r / 2**20:.0f} MiB | {r / total:.0%} |"
          for n, s, r in rows],
        "",
        "Targets: within 2x of the floor, peak RSS under 25% of the checkpoint size. torch_dist stores full "
        "(TP-independent) tensors, so TP=1 and TP=2 do the same work; their difference is noise on a machine "
        "shared with other jobs. About 5 s of each conversion is interpreter start-up and imports.",
    ]
    write_results(lines)
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
