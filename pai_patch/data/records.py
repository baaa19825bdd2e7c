"""Stream JSON records out of JSONL / JSON-array files (plain or gzip), keeping line numbers.

The corpus is never loaded: JSONL is read in blocks of lines, a JSON array is decoded one
element at a time.  Every record carries (file, line) so a bad one can be named precisely.
The main process only splits lines; parsing happens in the workers (``parse_line``).
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
BLOCK_BYTES = 1 << 20


class BadRecord(ValueError):
    """A record that cannot be used; ``reason`` is the short key counted with ``--skip-bad-lines``."""

    def __init__(self, path: str, line: int, reason: str, detail: str) -> None:
        super().__init__(f"{path}:{line}: {reason}: {detail}")
        self.path, self.line, self.reason, self.detail = path, line, reason, detail

    def __reduce__(self):  # keep the fields when the exception crosses a process boundary
        return BadRecord, (self.path, self.line, self.reason, self.detail)


@dataclass
class Chunk:
    """A block of raw records: ``payloads[i]`` is the JSON text found at line ``lines[i]`` of ``path``."""

    path: str
    lines: list[int] | range
    payloads: list[bytes]
    end_offset: int = 0


def find_inputs(inputs: str | os.PathLike | list) -> list[Path]:
    """Expand files and folders (sorted, so the output order is reproducible) into input files."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                raise FileNotFoundError(f"{item}: folder holds no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such input file or folder")
    return files


def _open(path: Path) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """Return (text stream in bytes, raw on-disk file) so progress can follow the compressed offset."""
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read: {err.strerror}") from err
    if path.suffix == ".gz":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw), BLOCK_BYTES), raw
    return raw, raw


def iter_chunks(path: Path, chunk_bytes: int = BLOCK_BYTES) -> Iterator[Chunk]:
    """Yield the records of one file in chunks of about ``chunk_bytes``; gzip damage is fatal.

    A damaged gzip file is never skipped, even with ``--skip-bad-lines``: the number of lost
    records would be unknown, and a dataset silently missing the end of a file is worse than
    a stopped run.
    """
    stream, raw = _open(path)
    line = 0
    try:
        with stream:
            line = _skip_preamble(stream)
            if stream.peek(1)[:1] == b"[":
                yield from _iter_array(path, stream, raw, chunk_bytes, line + 1)
                return
            while True:
                block = stream.readlines(chunk_bytes)
                if not block:
                    return
                yield Chunk(str(path), range(line + 1, line + 1 + len(block)), block, raw.tell())
                line += len(block)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as err:
        raise ValueError(f"{path}:{line + 1}: unreadable or corrupt file ({type(err).__name__}: {err}); "
                         "expected a complete JSONL/JSON file, gzip-compressed when named .gz") from err


def _skip_preamble(stream: io.BufferedIOBase) -> int:
    """Consume a UTF-8 BOM, blank lines and leading blanks, so the first byte left tells JSON array from JSONL.

    Editors on Windows save JSON with a BOM; read as JSONL, an array's lines are all malformed and
    ``--skip-bad-lines`` would quietly keep almost nothing.  Returns the number of lines consumed.
    """
    if stream.peek(3)[:3] == codecs.BOM_UTF8:
        stream.read(3)
    lines = 0
    while True:
        head = stream.peek(1)
        blanks = len(head) - len(head.lstrip(b" \t\r\n"))
        if not head or not blanks:
            return lines
        lines += head.count(b"\n", 0, blanks)
        stream.read(blanks)


def _iter_array(path: Path, stream: io.BufferedIOBase, raw: io.BufferedIOBase, chunk_bytes: int,
                line: int = 1) -> Iterator[Chunk]:
    """Decode a top-level JSON array element by element (``raw_decode`` over a sliding buffer)."""
    decoder = json.JSONDecoder()
    text, pos, eof = "", 0, False
    opened = closed = False
    lines: list[int] = []
    payloads: list[bytes] = []
    size = 0
    while True:
        if pos >= len(text):
            if eof:
                break
            text, pos = _read_text(stream, chunk_bytes, path, line), 0
            eof = not text
            continue
        ch = text[pos]
        if ch in " \t\r,\n" or (ch == "[" and not opened) or (ch == "]" and opened and not closed):
            line += ch == "\n"
            opened |= ch == "["
            closed |= ch == "]"
            pos += 1
            continue
        if closed:
            raise BadRecord(str(path), line, "malformed JSON", f"unexpected {ch!r} after the closing ']' of the array")
        while True:
            try:
                _, end = decoder.raw_decode(text, pos)
                break
            except json.JSONDecodeError as err:
                more = "" if eof else _read_text(stream, chunk_bytes, path, line)
                if not more:
                    raise BadRecord(str(path), line + text.count("\n", pos, err.pos), "malformed JSON", err.msg) from None
                text, pos = text[pos:] + more, 0
        element = text[pos:end]
        lines.append(line)
        payloads.append(element.encode())
        size += len(element)
        line += element.count("\n")
        pos = end
        if size >= chunk_bytes:
            yield Chunk(str(path), lines, payloads, raw.tell())
            lines, payloads, size = [], [], 0
    if not closed:
        raise BadRecord(str(path), line, "malformed JSON", "the array is not closed by ']'")
    if payloads:
        yield Chunk(str(path), lines, payloads, raw.tell())


def _read_text(stream: io.BufferedIOBase, size: int, path: Path, line: int) -> str:
    data = stream.read(size)
    # Do not cut a UTF-8 character in two: complete the line.
    data += stream.readline() if data and not data.endswith(b"\n") else b""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord(str(path), line, "not UTF-8", str(err)) from None


def checked_text(value: object, key: str, path: str, line: int) -> str:
    """``value`` if it is a string the tokenizer can take; ``BadRecord`` naming ``key`` otherwise.

    JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer encodes (the Rust
    one raises a ``TypeError`` that names nothing); scraped text has them.
    """
    if not isinstance(value, str):
        raise BadRecord(path, line, "non-string value", f"{key!r} holds a {type(value).__name__}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRecord(path, line, "invalid text", f"{key!r} holds a lone surrogate {value[err.start]!r} at "
                        f"character {err.start}, expected valid Unicode (text a tokenizer can encode)") from None
    return value


def parse_line(path: str, line: int, payload: bytes, key: str) -> str | None:
    """The string under ``key`` of one JSON object; ``None`` for a blank line. Raise ``BadRecord`` otherwise."""
    if not payload.strip():
        return None
    try:
        record = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRecord(path, line, "malformed JSON", f"{err}; expected one JSON object per line") from None
    if not isinstance(record, dict):
        raise BadRecord(path, line, "not an object", f"got a JSON {type(record).__name__}, expected an object with key {key!r}")
    if key not in record:
        raise BadRecord(path, line, "missing key", f"no {key!r} key (keys: {', '.join(list(record)[:8]) or 'none'})")
    value = checked_text(record[key], key, path, line)
    if not value:
        raise BadRecord(path, line, "empty document", f"{key!r} is an empty string")
    return value


#: ``--max-bad-fraction``'s default: skipping more than this share of the records stops the run
MAX_BAD_FRACTION = 0.01


def check_bad_fraction(skipped: Mapping[str, int], kept: int, max_fraction: float) -> None:
    """Refuse a ``--skip-bad-lines`` run that skipped more than ``max_fraction`` of its records.

    A file read the wrong way (or the wrong file) makes nearly every record "bad"; skipping them
    silently would publish a dataset holding a fraction of the corpus.  Raised before the
    outputs are renamed into place, so nothing is written.
    """
    bad = sum(skipped.values())
    total = bad + kept
    if not bad or bad <= max_fraction * total:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    raise ValueError(f"--skip-bad-lines skipped {bad} of {total} records ({bad / total:.1%}: {reasons}), more than "
                     f"--max-bad-fraction {max_fraction:g} allows; nothing was written (fix the input, or raise "
                     "--max-bad-fraction)")
