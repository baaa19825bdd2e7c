"""Pretraining corpus → ``<prefix>_<key>_document.bin/.idx``, the way Megatron-LM's preprocess_data does it, faster.

Same output as ``tools/preprocess_data.py`` (one sequence per document, EOD appended with
``append_eod``, dtype from the vocabulary size), but the work is organised per chunk of about
1 MB instead of per document: a worker parses a whole chunk, encodes it (``fast_bpe``'s exact
shortcut where it applies, one ``encode_batch_fast`` call of the Rust tokenizer for the rest),
and sends back one numpy array, which the main process writes with a single ``write``.  At
most ``2 * workers`` chunks are in flight, so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from pai_patch.data.fast_bpe import FastByteLevelBPE
from pai_patch.data.indexed import atomic_writers, optimal_dtype
from pai_patch.data.records import (MAX_BAD_FRACTION, BadRecord, Chunk, check_bad_fraction, find_inputs, iter_chunks,
                                    parse_line)
from pai_patch.data.sidecar import remove_sidecar, tokenizer_identity, write_sidecar
from pai_patch.data.tokenizer import vocab_size


@dataclass
class Summary:
    """What a preprocessing run produced and what it skipped (reason → count)."""

    output_prefix: str
    files: int = 0
    documents: int = 0
    tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.output_prefix}.bin/.idx: {self.documents} documents, {self.tokens} tokens from {self.files} "
                f"file(s) in {self.seconds:.1f}s ({rate:,.0f} tokens/s); skipped lines: {skipped}")


@dataclass
class _Encoded:
    tokens: np.ndarray
    lengths: np.ndarray
    skipped: collections.Counter
    path: str
    end_offset: int


class _Encoder:
    """Per-process encoding state (built once per worker, not pickled per chunk)."""

    def __init__(self, tokenizer, key: str, append_eod: bool, skip_bad_lines: bool, dtype: np.dtype) -> None:
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        if self.backend is not None and (self.backend.truncation or self.backend.padding):
            # tokenizer.encode() never truncates or pads unless asked; a tokenizer.json may set both.
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(self.backend.to_str())
            self.backend.no_truncation()
            self.backend.no_padding()
        self.fast = FastByteLevelBPE.build(tokenizer)
        self.key, self.append_eod, self.skip, self.dtype = key, append_eod, skip_bad_lines, dtype
        self.eod = tokenizer.eos_token_id

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=True)]
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Same ids as ``tokenizer.encode(text)`` for each text: the byte-level shortcut where it applies, one batch call for the rest."""
        if self.fast is None:
            return self._encode_all(texts)
        ids = [self.fast.encode(text) for text in texts]
        rest = [i for i, doc in enumerate(ids) if doc is None]
        for i, doc in zip(rest, self._encode_all([texts[i] for i in rest]) if rest else []):
            ids[i] = doc
        return ids

    def __call__(self, chunk: Chunk) -> _Encoded:
        skipped: collections.Counter = collections.Counter()
        texts, lines = [], []
        for line, payload in zip(chunk.lines, chunk.payloads):
            try:
                text = parse_line(chunk.path, line, payload, self.key)
            except BadRecord as err:
                if not self.skip:
                    raise
                skipped[err.reason] += 1
                continue
            if text is not None:
                texts.append(text)
                lines.append(line)
        ids = self.encode_batch(texts) if texts else []
        if any(not doc for doc in ids):
            empty = [line for line, doc in zip(lines, ids) if not doc]
            if not self.skip:
                raise BadRecord(chunk.path, empty[0], "empty document", f"{self.key!r} encodes to no tokens")
            skipped["empty document"] += len(empty)
            ids = [doc for doc in ids if doc]
        if self.append_eod:
            for doc in ids:
                doc.append(self.eod)
        lengths = np.fromiter(map(len, ids), np.int32, len(ids))
        tokens = np.fromiter(itertools.chain.from_iterable(ids), self.dtype, int(lengths.sum()))
        return _Encoded(tokens, lengths, skipped, chunk.path, chunk.end_offset)


class WorkerDied(ChildProcessError):
    """A pool worker ended without answering (signal, OOM kill, crash in native code)."""


_WORKER: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _WORKER
    _WORKER = encoder


def _encode_in_worker(chunk: Chunk) -> _Encoded:
    return _WORKER(chunk)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fresh interpreter ("forkserver", else "spawn"), never by forking this process.

    By the time the pool starts, this process has loaded torch and used the Rust tokenizer,
    whose thread pools do not survive ``fork``: a forked worker can segfault or deadlock.
    The forkserver imports this module once, so each worker after it forks ready to run.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _encoded_chunks(files: list[Path], encoder: _Encoder, workers: int) -> Iterator[_Encoded]:
    """Encoded chunks in input order; with workers > 1 a bounded window of chunks runs in a pool.

    A worker that dies (killed, out of memory, crashed) fails the run with ``WorkerDied``
    instead of leaving the main process waiting for a result that never comes.
    """
    chunks = (chunk for path in files for chunk in iter_chunks(path))
    if workers <= 1:
        yield from map(encoder, chunks)
        return
    with ProcessPoolExecutor(workers, mp_context=_worker_context(), initializer=_init_worker,
                             initargs=(encoder,)) as pool:
        pending: collections.deque[Future] = collections.deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_encode_in_worker, chunk))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as err:
            raise WorkerDied(f"a tokenizer worker process died ({err}); nothing was written. "
                             "Rerun with --workers 1 to see the failure in this process") from None
        finally:
            for future in pending:
                future.cancel()


def preprocess_pretrain(inputs, tokenizer, output_prefix: str | os.PathLike, *, json_key: str = "text",
                        workers: int = 1, append_eod: bool = True, skip_bad_lines: bool = False,
                        progress: bool = True, max_bad_fraction: float = MAX_BAD_FRACTION) -> Summary:
    """Tokenize ``inputs`` (file, folder or list of them) into ``<output_prefix>_<json_key>_document``.

    Raises ``BadRecord`` (a ``ValueError`` naming file and line) on the first bad record unless
    ``skip_bad_lines``, and ``ValueError`` when more than ``max_bad_fraction`` of the records were
    skipped; nothing is left under the final name when it raises.  On success the
    tokenizer's identity is recorded beside the dataset (``pai_patch.data.sidecar``).
    """
    files = find_inputs(inputs)
    prefix = f"{output_prefix}_{json_key}_document"
    dtype = np.dtype(optimal_dtype(vocab_size(tokenizer)))
    encoder = _Encoder(tokenizer, json_key, append_eod, skip_bad_lines, dtype)
    summary = Summary(prefix, files=len(files))
    offsets = {str(p): 0 for p in files}
    start = time.perf_counter()
    remove_sidecar(prefix)  # first write under the output prefix: a bad prefix fails before the progress bar
    bar = tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="preprocess",
               disable=not progress, mininterval=1.0)
    skipped: collections.Counter = collections.Counter()
    max_token_id = -1
    with bar, atomic_writers({"tokens": (prefix, dtype)}) as writers:
        for enc in _encoded_chunks(files, encoder, workers):
            writers["tokens"].add_documents(enc.tokens, enc.lengths)
            summary.documents += len(enc.lengths)
            summary.tokens += len(enc.tokens)
            if len(enc.tokens):
                max_token_id = max(max_token_id, int(enc.tokens.max()))
            skipped.update(enc.skipped)
            bar.update(enc.end_offset - offsets[enc.path])
            offsets[enc.path] = enc.end_offset
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{summary.documents / elapsed:,.0f} docs/s, {summary.tokens / elapsed:,.0f} tokens/s",
                                refresh=False)
        check_bad_fraction(skipped, summary.documents, max_bad_fraction)
    write_sidecar(prefix, tokenizer_identity(tokenizer), max_token_id)
    summary.skipped = dict(skipped)
    summary.seconds = time.perf_counter() - start
    return summary
