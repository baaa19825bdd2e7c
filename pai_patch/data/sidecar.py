"""``<prefix>.tokenizer.json``: which tokenizer made a tokenized dataset, next to its ``.bin/.idx``.

Token ids only mean something together with the tokenizer that produced them; the idxmap
format does not record it, so data made with one tokenizer and trained with another gives
garbage or an index error deep inside the embedding.  Preprocessing writes this small JSON
file beside the dataset (megatron-core reads only ``.bin``/``.idx`` and ignores it); training
compares it with the tokenizer it is given (``pai_patch.training.vocab_check``).

Fields: ``name`` (as the user named the tokenizer), ``vocab_size`` (ids it can produce),
``fingerprint`` (SHA-256 of its id → token table, added tokens included: two tokenizers
with the same fingerprint give ids the same meaning, whatever their file layout or chat
template), ``max_token_id`` of the data and ``bin_bytes``, the size of the ``.bin`` it
describes (a sidecar whose ``.bin`` was since replaced is stale and ignored).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pai_patch.data.indexed import bin_path
from pai_patch.data.tokenizer import vocab_size
from pai_patch.utils import write_text_atomic

SUFFIX = ".tokenizer.json"


@dataclass(frozen=True)
class TokenizerIdentity:
    name: str
    vocab_size: int
    fingerprint: str

    def describe(self) -> str:
        return f"{self.name} ({self.vocab_size} ids, fingerprint {self.fingerprint[:12]})"


@dataclass(frozen=True)
class Sidecar:
    tokenizer: TokenizerIdentity
    max_token_id: int
    bin_bytes: int


def sidecar_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}{SUFFIX}")


def tokenizer_identity(tokenizer, name: str | None = None) -> TokenizerIdentity:  # noqa: ANN001 - an HF tokenizer
    """Name, id count and fingerprint of ``tokenizer`` (``name`` defaults to the directory it was loaded from)."""
    table = sorted((int(i), token) for token, i in tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(table, ensure_ascii=False).encode()).hexdigest()
    return TokenizerIdentity(name or str(tokenizer.name_or_path) or type(tokenizer).__name__, vocab_size(tokenizer),
                             digest)


def remove_sidecar(prefix: str | os.PathLike) -> None:
    """Called before a dataset is rewritten: an old sidecar must never describe new data."""
    sidecar_path(prefix).unlink(missing_ok=True)


def write_sidecar(prefix: str | os.PathLike, identity: TokenizerIdentity, max_token_id: int) -> Path:
    """Record ``identity`` for the dataset at ``prefix`` (its ``.bin`` must be in place), atomically."""
    record = Sidecar(identity, int(max_token_id), bin_path(prefix).stat().st_size)
    path = sidecar_path(prefix)
    write_text_atomic(path, json.dumps(asdict(record), indent=1) + "\n")
    return path


def read_sidecar(prefix: str | os.PathLike) -> Sidecar | None:
    """The sidecar of ``prefix``; None when there is none or it describes another ``.bin`` (stale)."""
    path = sidecar_path(prefix)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        record = Sidecar(TokenizerIdentity(**raw["tokenizer"]), int(raw["max_token_id"]), int(raw["bin_bytes"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable tokenizer sidecar ({type(err).__name__}: {err}); delete it or "
                         "preprocess the data again") from None
    data = bin_path(prefix)
    if not data.is_file() or data.stat().st_size != record.bin_bytes:
        return None
    return record
