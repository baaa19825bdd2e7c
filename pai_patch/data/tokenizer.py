"""Load a tokenizer offline, by directory or by the names the original toolkit scripts use."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pai_patch.cli import CliError
from pai_patch.utils import atomic_path

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"
SHIPPED_NAMES = {"shipped", "PaiTinyTokenizer"}
#: The seeds name the tokenizer class (and pass its directory separately), each that of one model family;
#: all are HF fast tokenizers.
SEED_NAMES = {"DeepSeekV2Tokenizer": "deepseek_v2", "Qwen2Tokenizer": "qwen2_5", "LLamaTokenizer": "llama2",
              "LlamaTokenizer": "llama2"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


#: What an HF checkpoint directory holds besides weights that a tokenizer load (or a later export) needs.
#: The converter copies these next to a Megatron checkpoint, as the original toolkit does.
HF_SIDE_FILES = TOKENIZER_FILES + ("tokenizer_config.json", "special_tokens_map.json", "merges.txt",
                                   "added_tokens.json", "chat_template.jinja", "config.json", "generation_config.json")


class TokenizerNotFound(CliError):
    """A seed tokenizer name whose files are in none of the places looked in."""


def has_tokenizer(directory: str | os.PathLike | None) -> bool:
    """True when ``directory`` holds the files an HF tokenizer loads from."""
    return bool(directory) and any((Path(directory) / f).is_file() for f in TOKENIZER_FILES)


def find_tokenizer(name_or_dir: str, *, explicit: str | os.PathLike | None = None,
                   hf: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   family: str | None = None) -> Path:
    """The directory to load ``name_or_dir`` from.

    A seed class name (``Qwen2Tokenizer``...) says which tokenizer, not where: the files are looked for in an
    explicit directory (``data.tokenizer=DIR``, the seeds' TOKENIZER_DIR), then the HF checkpoint (``hf=``), then
    the checkpoint being loaded, where ``convert hf2mcore`` copies them. Users of the original toolkit never pass a
    tokenizer directory to its launchers, so the last place is the common one. What the name still says is the
    model family, checked against ``family`` (the model's) when given.
    """
    if name_or_dir in SHIPPED_NAMES:
        return SHIPPED
    if name_or_dir not in SEED_NAMES:
        return Path(name_or_dir)
    if family and SEED_NAMES[name_or_dir] != family:
        raise CliError(f"tokenizer {name_or_dir!r} is the {SEED_NAMES[name_or_dir]} tokenizer, but the model is "
                       f"{family}; name this model's ({', '.join(n for n, f in SEED_NAMES.items() if f == family)})")
    places = (("the tokenizer directory (data.tokenizer=DIR / TOKENIZER_DIR)", explicit),
              ("the HF checkpoint (hf=)", hf), ("the checkpoint being loaded", checkpoint))
    for _, place in places:
        if has_tokenizer(place):
            return Path(place)
    looked = "; ".join(f"{what}: {place if place else 'not given'}" for what, place in places)
    raise TokenizerNotFound(f"tokenizer {name_or_dir!r}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) found in {looked}")


def copy_tokenizer_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy ``HF_SIDE_FILES`` present in ``source`` into ``target``; returns the names copied.

    Each file is renamed into place, so a reader of a live checkpoint directory never sees half of one.
    """
    copied = []
    for name in HF_SIDE_FILES:
        if (Path(source) / name).is_file():
            with atomic_path(Path(target) / name) as tmp:
                shutil.copyfile(Path(source) / name, tmp)
            copied.append(name)
    return copied


def load_tokenizer(name_or_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, *,
                   hf: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   family: str | None = None):
    """An HF ``PreTrainedTokenizerBase`` from local files only (never the hub).

    ``tokenizer_dir``, ``hf`` and ``checkpoint`` are where a seed class name's files are looked
    for, and ``family`` the model family it must be of (:func:`find_tokenizer`). A directory that does not load raises ``CliError`` naming it and
    the file that is missing, because transformers' own message for an offline miss talks about the hub.
    """
    from transformers import AutoTokenizer  # heavy import, only when a tokenizer is needed

    path = find_tokenizer(str(name_or_dir), explicit=tokenizer_dir, hf=hf, checkpoint=checkpoint, family=family)
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
