"""An exact shortcut for byte-level BPE tokenizers: regex split + a pre-token cache.

Profiling ``preprocess pretrain`` shows ~90% of the time inside the Rust tokenizer, most of it
re-tokenizing the same words.  For GPT-2-style byte-level BPE (the shipped tokenizer, Qwen2 and
its relatives) the ids of a document are the concatenation of the ids of its pre-tokens, so
caching ``pre-token -> ids`` and splitting with the tokenizer's own regex is 2.5-3x faster.

Exactness is kept by narrowing where it applies, not by hoping:
* only tokenizers whose pipeline is: no normalizer or a Unicode normal form, pre-tokenizer
  ``ByteLevel(use_regex)`` or ``Split(regex, Isolated) + ByteLevel``, BPE model without dropout,
  no truncation/padding; anything else gets ``None`` from ``build``, which also checks the
  shortcut against the tokenizer on probe strings;
* only documents containing no added-token string and made of characters the shortcut has
  admitted: printable ASCII, tab, LF and CR from the start, any other character once the
  tokenizer's own normalizer and pre-tokenizer agree with the shortcut on it in every context
  that decides how the split regex treats it (letter, digit, space, other; contraction letter).
  Characters that could compose or reorder under a normal form (marks, Hangul jamo) or that
  this Python's Unicode tables do not know are refused.  ``encode`` returns ``None`` for any
  other document and the caller uses the tokenizer itself;
* misses are tokenized by the tokenizer's own BPE model.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PLAIN_ASCII = re.compile(r"[\t\n\r\x20-\x7e]*")
UNICODE_FORMS = {None, "NFC", "NFD", "NFKC", "NFKD"}
CACHE_LIMIT = 500_000
PROBES = ["Hello world", "  two  spaces\n\nand\ttabs\r\n", "it's we'll I'd you're", "x=1+2.5; y=[a,b]!? 12345 67",
          "CamelCase snake_case kebab-case", "trailing space ", " leading", "\n", "ABC's 'quoted' \"dq\" ~^`|",
          "MiXeD 3rd 21st 1,000,000.00%"]


# How a character is probed before admission: each context, with the character for {c}, must split
# (and normalize) the same way in the tokenizer as here.  Together they tell letter / digit / space /
# other apart under both patterns, and whether it case-folds to a letter of a contraction ('s, 're, ...).
CONTEXTS = ("{c}", "a{c}", "{c}a", "1{c}", "{c}1", "!{c}", "{c}!", "{c}{c}", " {c}", "{c} ", "x {c}y", "{c}  x",
            "\n{c}", "{c}\n", "'{c}", "'{c}e", "'{c}l", "'r{c}", "'v{c}", "'l{c}")
HANGUL_JAMO_VOWELS_AND_TRAILS = ((0x1160, 0x11FF), (0xD7B0, 0xD7FF))


def _byte_level_table() -> dict[int, str]:
    """GPT-2's ``bytes_to_unicode``, keyed by the Latin-1 character of each byte (for ``str.translate``)."""
    kept = [b for b in range(256) if ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    shifted = [b for b in range(256) if b not in kept]
    table = {b: chr(b) for b in kept}
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


def _composition_inert(char: str) -> bool:
    """True if a normal form cannot merge this character with a neighbour, whatever the neighbour.

    Composition joins a character to the one before it only when it is a mark or a Hangul vowel or
    trailing jamo, so a text of inert characters normalizes character by character, and the probes
    see every change a normalizer makes.  Unassigned ('Cn') and surrogate code points are refused:
    this interpreter's Unicode tables cannot vouch for them.
    """
    category = unicodedata.category(char)
    if category[0] == "M" or category in ("Cn", "Cs") or unicodedata.combining(char):
        return False
    return not any(lo <= ord(char) <= hi for lo, hi in HANGUL_JAMO_VOWELS_AND_TRAILS)


class FastByteLevelBPE:
    """``encode(text)`` → the tokenizer's ids for text of admitted characters, or ``None`` when it is out of scope."""

    def __init__(self, backend, pattern: str, prefix: list[int], suffix: list[int], added: list[str]) -> None:
        import regex  # a transformers dependency; supports \p{L} like the Rust tokenizer's regex engine

        self.model, self.normalizer, self.pre_tokenizer = backend.model, backend.normalizer, backend.pre_tokenizer
        self.splitter = regex.compile(f"({pattern})")
        self.table = str.maketrans({chr(b): c for b, c in _byte_level_table().items()})
        self.prefix, self.suffix = prefix, suffix
        self.added = re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True)))) if added else None
        self.cache: dict[str, list[int]] = {}
        self.admitted = set(filter(PLAIN_ASCII.fullmatch, map(chr, range(128))))  # encode's fast check, as a set
        self.refused: set[str] = set()

    @classmethod
    def build(cls, tokenizer) -> "FastByteLevelBPE | None":
        """The shortcut for ``tokenizer`` if its pipeline is one this module reproduces exactly, else ``None``."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        spec = json.loads(backend.to_str())
        pattern = _pattern(spec)
        model = spec.get("model") or {}
        if (pattern is None or (spec.get("normalizer") or {}).get("type") not in UNICODE_FORMS
                or model.get("type") != "BPE" or model.get("dropout") or spec.get("truncation") or spec.get("padding")):
            return None
        added = [t["content"] for t in spec.get("added_tokens", [])]
        with_special = backend.encode("a", add_special_tokens=True).ids
        core = backend.encode("a", add_special_tokens=False).ids
        if len(core) != 1 or core[0] not in with_special or len(added) > 1000:
            return None
        at = with_special.index(core[0])
        try:
            fast = cls(backend, pattern, with_special[:at], with_special[at + 1:], added)
        except Exception:  # a pattern the Python regex engine reads differently: no shortcut
            return None
        if fast.splitter.groups != 1:
            return None
        if any(fast.encode(p) != backend.encode(p, add_special_tokens=True).ids for p in PROBES):
            return None
        fast.cache.clear()
        return fast

    def _byte_level(self, piece: str) -> str:
        """The pre-token as ByteLevel hands it to the BPE model: each UTF-8 byte as its printable stand-in."""
        return piece.encode("utf-8").decode("latin-1").translate(self.table)

    def _ids(self, piece: str) -> list[int]:
        ids = self.cache.get(piece)
        if ids is None:
            if len(self.cache) >= CACHE_LIMIT:
                self.cache.clear()
            ids = self.cache[piece] = [t.id for t in self.model.tokenize(self._byte_level(piece))]
        return ids

    def _agrees_on(self, char: str) -> bool:
        """The tokenizer normalizes and pre-tokenizes ``char`` in every probe context as this shortcut does."""
        if not _composition_inert(char):
            return False
        for context in CONTEXTS:
            probe = context.format(c=char)
            if self.normalizer is not None and self.normalizer.normalize_str(probe) != probe:
                return False
            theirs = [piece for piece, _ in self.pre_tokenizer.pre_tokenize_str(probe)]
            if theirs != [self._byte_level(p) for p in self.splitter.split(probe) if p]:
                return False
        return True

    def _admits(self, text: str) -> bool:
        """Every character of ``text`` is admitted; new ones are probed once (per process) and remembered."""
        for char in set(text) - self.admitted:
            if char in self.refused or not self._agrees_on(char):
                self.refused.add(char)
                return False
            self.admitted.add(char)
        return True

    def encode(self, text: str) -> list[int] | None:
        if not (PLAIN_ASCII.fullmatch(text) or self._admits(text)) or (self.added is not None and self.added.search(text)):
            return None
        pieces = [p for p in self.splitter.split(text) if p]
        return [*self.prefix, *itertools.chain.from_iterable(map(self._ids, pieces)), *self.suffix]


def _pattern(spec: dict) -> str | None:
    """The pre-tokenizer's split regex when it is ByteLevel(use_regex) or Split(Isolated)+ByteLevel(no regex)."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and "Regex" in steps[0].get("pattern", {}) and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")):
        return steps[0]["pattern"]["Regex"]
    return None
