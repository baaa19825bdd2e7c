"""Load a tokenizer offline, by directory or by the names the original toolkit scripts use."""

from __future__ import annotations

import os
from pathlib import Path

from pai_patch.cli import CliError

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"
SHIPPED_NAMES = {"shipped", "PaiTinyTokenizer"}
# The seeds name the tokenizer class and pass its directory separately; all are HF fast tokenizers.
SEED_NAMES = {"DeepSeekV2Tokenizer", "Qwen2Tokenizer", "LLamaTokenizer", "LlamaTokenizer"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def resolve_tokenizer_dir(name_or_dir: str, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Map ``name_or_dir`` (+ ``tokenizer_dir`` for seed names) to a local directory."""
    if name_or_dir in SHIPPED_NAMES:
        return SHIPPED
    if name_or_dir in SEED_NAMES:
        if not tokenizer_dir:
            raise CliError(f"tokenizer {name_or_dir!r} needs its directory (the TOKENIZER_DIR argument / --tokenizer-dir)")
        return Path(tokenizer_dir)
    return Path(name_or_dir)


def load_tokenizer(name_or_dir: str, tokenizer_dir: str | None = None):
    """An HF ``PreTrainedTokenizerBase`` from local files only (never the hub).

    A directory that does not load raises ``CliError`` naming it and the file that is missing,
    because transformers' own message for an offline miss talks about the hub.
    """
    from transformers import AutoTokenizer  # heavy import, only when a tokenizer is needed

    path = resolve_tokenizer_dir(str(name_or_dir), tokenizer_dir)
    if not path.is_dir():
        raise CliError(f"tokenizer directory {path} does not exist")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CliError(f"tokenizer directory {path} does not load: it has none of {', '.join(TOKENIZER_FILES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # transformers raises many types (OSError, ValueError, JSON errors ...)
        raise CliError(f"tokenizer directory {path} does not load: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    if tokenizer.eos_token_id is None:
        raise CliError(f"tokenizer in {path} has no eos_token; it is needed as the end-of-document id")
    return tokenizer


def vocab_size(tokenizer) -> int:
    """Ids the data may hold: the base vocabulary plus added tokens (what ``len()`` counts)."""
    return max(len(tokenizer), tokenizer.vocab_size)
