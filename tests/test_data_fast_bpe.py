"""The ASCII byte-level BPE shortcut gives exactly the tokenizer's ids, and stays out of what it cannot reproduce."""

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


@pytest.fixture(scope="module")
def qwen_style():
    tok = _variant({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]})
    return tok, FastByteLevelBPE.build(tok)


@settings(max_examples=300, deadline=None)
@given(text=ASCII)
def test_shipped_tokenizer_exact(shipped, text):
    tok, fast = shipped
    ids = fast.encode(text)
    if any(c in text for c in "\x0b\x0c"):
        assert ids is None
    else:
        assert ids == tok.encode(text)


@settings(max_examples=300, deadline=None)
@given(text=ASCII)
def test_split_regex_tokenizer_exact(qwen_style, text):
    tok, fast = qwen_style
    assert fast is not None
    ids = fast.encode(text)
    assert ids is None or ids == tok.encode(text)


def test_out_of_scope_texts_fall_back(shipped):
    _, fast = shipped
    assert fast.encode("北京 is Beijing") is None
    assert fast.encode("caf\u00e9") is None
    assert fast.encode("end<|endoftext|>start") is None
    assert fast.encode("bell\x07") is None


def test_unsupported_pipelines_get_no_shortcut():
    assert FastByteLevelBPE.build(_variant({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True})) is None
    assert FastByteLevelBPE.build(_variant({"type": "Whitespace"})) is None
    assert FastByteLevelBPE.build(_variant(normalizer={"type": "Lowercase"})) is None
