"""``make bench-data``: pretraining preprocessing throughput vs Megatron-LM's per-document loop.

Generates a JSONL corpus (default 200 MB, under bench/_work/, reused when present), then
runs, each in its own process with the shipped tokenizer:
  (a) a baseline that does what Megatron-LM's ``tools/preprocess_data.py`` does per worker:
      ``json.loads`` a line, ``tokenizer(text).input_ids``, append EOD, ``add_document`` into
      megatron-core's ``IndexedDatasetBuilder``, over ``Pool.imap(..., chunksize=32)``; with 1 and
      2 worker processes;
  (b) ``preprocess_pretrain`` with 2 workers.
Prints tokens/s, the ratios and the peak RSS (summed over the process tree), checks the outputs
are byte-identical, and records the figures under ``## Data preprocessing`` in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import filecmp
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `make bench-data` runs this file directly, from any install state
import pai_patch  # noqa: E402,F401  (quiets megatron-core's missing-CUDA-extension warnings in the baseline)

WORK = ROOT / "bench" / "_work"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Data preprocessing"


def make_corpus(path: Path, size_mb: int, seed: int = 0) -> None:
    """Documents of lognormal length (median ~650 chars) mixing the shipped corpus' sentences and random words."""
    if path.exists() and path.stat().st_size >= size_mb << 20:
        return
    rng = random.Random(seed)
    shipped = (ROOT / "pai_patch" / "assets" / "corpus" / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()
    sentences = [s.strip() + "." for line in shipped for s in json.loads(line)["text"].split(".") if s.strip()]
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(20000)]
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        while written < size_mb << 20:
            target = int(rng.lognormvariate(6.5, 1.0)) + 20
            parts, n = [], 0
            while n < target:
                piece = rng.choice(sentences) if rng.random() < 0.6 else " ".join(rng.choices(words, k=rng.randint(4, 14))) + "."
                parts.append(piece)
                n += len(piece) + 1
            line = json.dumps({"text": " ".join(parts)}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())
    tmp.rename(path)


# ---- baseline: Megatron-LM tools/preprocess_data.py, per document ---------------------------------------------

class _MegatronEncoder:
    def initializer(self) -> None:
        import transformers

        from pai_patch.data.tokenizer import load_tokenizer

        transformers.logging.set_verbosity_error()  # no "longer than model_max_length" line per worker

        _MegatronEncoder.tokenizer = load_tokenizer("shipped")

    def encode(self, json_line: str):
        data = json.loads(json_line)
        ids = _MegatronEncoder.tokenizer(data["text"]).input_ids
        lens = [len(ids)]
        if ids:
            ids.append(_MegatronEncoder.tokenizer.eos_token_id)
            lens[-1] += 1
        return ids, lens, len(json_line)


def run_baseline(corpus: Path, prefix: Path, workers: int) -> tuple[int, int]:
    import multiprocessing

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    encoder = _MegatronEncoder()
    encoder.initializer()
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=DType.optimal_dtype(len(encoder.tokenizer)))
    docs = tokens = 0
    # forkserver, not Megatron's fork: this process has used the Rust tokenizer, whose threads do not survive fork
    pool = multiprocessing.get_context("forkserver").Pool(workers, initializer=encoder.initializer)
    with open(corpus, encoding="utf-8") as fin, pool:
        for doc, lens, _ in pool.imap(encoder.encode, fin, 32):
            builder.add_document(doc, lens)
            docs += 1
            tokens += len(doc)
    builder.finalize(f"{prefix}.idx")
    return docs, tokens


def run_ours(corpus: Path, prefix: Path, workers: int) -> tuple[int, int]:
    from pai_patch.data.pretrain import preprocess_pretrain
    from pai_patch.data.tokenizer import load_tokenizer

    summary = preprocess_pretrain(corpus, load_tokenizer("shipped"), str(prefix).removesuffix("_text_document"),
                                  workers=workers, append_eod=True, progress=False)
    return summary.documents, summary.tokens


# ---- driver ---------------------------------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants.

    Both pools start their workers from a forkserver, which is this driver's grandchild and outlives
    the measured process for a moment; without this it is reparented to init and its CPU time (which
    includes that of the workers it reaped) never reaches this process's ``RUSAGE_CHILDREN``.
    """
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans() -> None:
    """Wait for every descendant that was reparented here (the forkserver), so its CPU time is counted."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def measure(kind: str, workers: int, corpus: Path) -> dict:
    """Run one configuration in a child process; sample the summed RSS of its process tree."""
    prefix = WORK / f"{kind}{workers}_text_document"
    cmd = [sys.executable, __file__, "--child", kind, "--workers", str(workers), "--corpus", str(corpus), "--prefix", str(prefix)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    parent, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            mems = [p.memory_full_info() for p in tree]
            # PSS splits pages shared by the forked workers (torch, the tokenizer) between them.
            peak_pss = max(peak_pss, sum(m.pss for m in mems))
            peak_rss = max(peak_rss, *(m.rss for m in mems))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out = proc.stdout.read()
    reap_orphans()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child, the forkserver and its workers
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"{kind} with {workers} workers failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(kind=kind, workers=workers, cpu_seconds=cpu, peak_pss_mb=peak_pss / 2**20, peak_rss_mb=peak_rss / 2**20, prefix=str(prefix))
    print(f"{kind:>8} workers={workers}: {result['tokens']:,} tokens in {result['seconds']:.1f}s = "
          f"{result['tokens'] / result['seconds']:,.0f} tokens/s, {result['tokens'] / cpu:,.0f} tokens/CPU-s, peak memory {result['peak_pss_mb']:.0f} MB PSS "
          f"(largest process RSS {result['peak_rss_mb']:.0f} MB)", flush=True)
    return result


def write_results(rows: list[dict], corpus: Path, identical: bool) -> str:
    base = {r["workers"]: r["tokens"] / r["seconds"] for r in rows if r["kind"] == "baseline"}
    base_cpu = {r["workers"]: r["tokens"] / r["cpu_seconds"] for r in rows if r["kind"] == "baseline"}
    ours = next(r for r in rows if r["kind"] == "ours")
    rate, rate_cpu = ours["tokens"] / ours["seconds"], ours["tokens"] / ours["cpu_seconds"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [SECTION, "",
             f"`make bench-data` on {datetime.date.today().isoformat()}, machine: 2-core CPU (shared), shipped tokenizer, "
             f"corpus {corpus.stat().st_size / 2**20:.0f} MB JSONL ({ours['documents']:,} documents, {ours['tokens']:,} tokens).",
             "Baseline = Megatron-LM `tools/preprocess_data.py` loop (per-document `json.loads` + `tokenizer(text)` + "
             "`IndexedDatasetBuilder.add_document`, `Pool.imap` chunksize 32). The machine is shared: load average "
             f"at the end {load}; wall-clock rates move with the other users' load, CPU-time rates much less. "
             "CPU (s) is the whole process tree's: the run, its forkserver and every worker.", "",
             "| run | workers | tokens/s (wall) | time (s) | tokens per CPU-second | CPU (s) | peak memory, PSS of all processes (MB) "
             "| largest process RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['workers']} | {r['tokens'] / r['seconds']:,.0f} | {r['seconds']:.1f} | "
                     f"{r['tokens'] / r['cpu_seconds']:,.0f} | {r['cpu_seconds']:.1f} | {r['peak_pss_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Ours (2 workers) vs baseline with 2 workers: **{rate / base[2]:.2f}x** wall-clock, "
              f"{rate_cpu / base_cpu[2]:.2f}x per CPU-second; vs baseline with 1 worker: {rate / base[1]:.2f}x wall-clock, "
              f"{rate_cpu / base_cpu[1]:.2f}x per CPU-second. Outputs byte-identical to the baseline's: "
              f"{'yes' if identical else 'NO'}.", ""]
    text = "\n".join(lines)
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new, encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--no-record", action="store_true", help="do not update bench/RESULTS.md")
    parser.add_argument("--child", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        start = time.perf_counter()
        run = run_baseline if args.child == "baseline" else run_ours
        docs, tokens = run(Path(args.corpus), Path(args.prefix), args.workers)
        print(json.dumps({"documents": docs, "tokens": tokens, "seconds": time.perf_counter() - start}))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    corpus = WORK / f"corpus_{args.size_mb}mb.jsonl"
    print(f"corpus: {corpus} ({args.size_mb} MB) ...", flush=True)
    make_corpus(corpus, args.size_mb)
    adopt_orphans()
    rows = [measure("baseline", 1, corpus), measure("baseline", 2, corpus), measure("ours", 2, corpus)]
    identical = all(filecmp.cmp(f"{rows[0]['prefix']}{ext}", f"{rows[2]['prefix']}{ext}", shallow=False) for ext in (".bin", ".idx"))
    for row in rows:  # keep the corpus for the next run, not the ~400 MB of outputs
        for ext in (".bin", ".idx"):
            Path(f"{row['prefix']}{ext}").unlink(missing_ok=True)
    base2 = rows[1]["tokens"] / rows[1]["seconds"]
    print(f"ours / baseline (2 workers): {rows[2]['tokens'] / rows[2]['seconds'] / base2:.2f}x; outputs identical: {identical}")
    if not args.no_record:
        print(write_results(rows, corpus, identical))
    return 0


if __name__ == "__main__":
    sys.exit(main())
