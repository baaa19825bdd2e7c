"""The byte-level BPE shortcut gives exactly the tokenizer's ids, and stays out of what it cannot reproduce."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pai_patch.data.fast_bpe import FastByteLevelBPE
from pai_patch.data.tokenizer import SHIPPED, load_tokenizer

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
ASCII = st.text(alphabet=string.printable, max_size=300)
# any Unicode (no surrogates), weighted towards what corpora mix: Latin, CJK, punctuation, spaces, marks
UNICODE = st.text(alphabet=st.one_of(st.sampled_from("ab1 '\n!"), st.characters(exclude_categories=("Cs",))), max_size=60)
MIXED = "Beijing (北京) is the capital of China. Café, naïve, “quoted” — 한국어, ｆｕｌｌ　width, ſt 'ſ, emoji 😀!"


def _variant(pre_tokenizer: dict | None = None, **extra):
    """The shipped tokenizer with its pre-tokenizer (or other top-level fields) replaced."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads((SHIPPED / "tokenizer.json").read_text())
    if pre_tokenizer is not None:
        spec["pre_tokenizer"] = pre_tokenizer
    spec.update(extra)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def shipped():
    tok = load_tokenizer("shipped")
    return tok, FastByteLevelBPE.build(tok)


QWEN2_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


@pytest.fixture(scope="module")
def qwen_style():
    """Qwen2's pipeline: NFC, its split regex, ByteLevel."""
    tok = _variant(QWEN2_PRE_TOKENIZER, normalizer={"type": "NFC"})
    return tok, FastByteLevelBPE.build(tok)


@pytest.fixture(scope="module")
def nfkc_style():
    tok = _variant(QWEN2_PRE_TOKENIZER, normalizer={"type": "NFKC"})
    return tok, FastByteLevelBPE.build(tok)


@settings(max_examples=300, deadline=None)
@given(text=ASCII)
def test_shipped_tokenizer_exact(shipped, text):
    tok, fast = shipped
    ids = fast.encode(text)
    if all(c in string.printable[:-2] for c in text):  # printable ASCII, tab, LF, CR: always in scope
        assert ids == tok.encode(text)
    else:  # vertical tab or form feed: in scope once probed, if the tokenizer agrees on them
        assert ids is None or ids == tok.encode(text)


@settings(max_examples=300, deadline=None)
@given(text=ASCII)
def test_split_regex_tokenizer_exact(qwen_style, text):
    tok, fast = qwen_style
    assert fast is not None
    ids = fast.encode(text)
    assert ids is None or ids == tok.encode(text)


@settings(max_examples=300, deadline=None)
@given(text=UNICODE)
def test_any_unicode_text_is_exact_or_falls_back(shipped, qwen_style, nfkc_style, text):
    for tok, fast in (shipped, qwen_style, nfkc_style):
        ids = fast.encode(text)
        assert ids is None or ids == tok.encode(text), (text, tok.backend_tokenizer.normalizer)


def test_mixed_script_documents_take_the_shortcut(shipped, qwen_style):
    for tok, fast in (shipped, qwen_style):
        assert fast.encode(MIXED) == tok.encode(MIXED)


def test_out_of_scope_texts_fall_back(shipped, nfkc_style):
    _, fast = shipped
    assert fast.encode("cafe\u0301") is None  # a combining mark: a normal form would merge it
    assert fast.encode("\u1100\u1161") is None  # Hangul jamo, which compose into a syllable
    assert fast.encode("end<|endoftext|>start") is None
    assert fast.encode("\u0378") is None  # unassigned: this Python's Unicode tables cannot vouch for it
    _, nfkc = nfkc_style
    assert nfkc.encode("ｆｕｌｌ") is None  # NFKC rewrites fullwidth letters


def test_unsupported_pipelines_get_no_shortcut():
    assert FastByteLevelBPE.build(_variant({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True})) is None
    assert FastByteLevelBPE.build(_variant({"type": "Whitespace"})) is None
    assert FastByteLevelBPE.build(_variant(normalizer={"type": "Lowercase"})) is None
