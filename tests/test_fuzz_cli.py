"""Generated bad input through the real CLIs, in process: JSONL records for ``preprocess``, config.json values
for ``convert hf2mcore``.

Whatever the damage, a run either succeeds with a complete output or exits 2 with exactly one ``error:``
line, no traceback, and nothing under the output's final name.  Examples are derandomized (the same in
every run) and few enough to keep the file well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pai_patch.cli import main

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def _assert_one_line_failure(rc: int, err: str, out: Path) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(re.findall(r"(?m)error: ", err)) == 1, err
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)], "output left behind"


GOOD = json.dumps({"text": "one fish two fish"})


@st.composite
def bad_records(draw) -> bytes:
    """One JSONL line that no reader may accept, of a kind picked by hypothesis."""
    kind = draw(st.sampled_from(["truncated", "value", "key", "surrogate", "bytes", "array"]))
    text = draw(st.text(min_size=1, max_size=20))
    if kind == "truncated":  # cut before the closing brace: never valid JSON
        line = json.dumps({"text": text})
        return line[:draw(st.integers(1, len(line) - 1))].encode()
    if kind == "value":
        value = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                               st.lists(st.text(max_size=3), max_size=3), st.just("")))
        return json.dumps({"text": value}).encode()
    if kind == "key":
        return json.dumps({draw(st.text(max_size=8).filter(lambda k: k != "text")): text}).encode()
    if kind == "surrogate":
        return ('{"text": "%s\\ud%03x"}' % (text.replace("\\", "").replace('"', ""), draw(st.integers(0x800, 0xfff)))).encode()
    if kind == "bytes":
        return b'{"text": "' + draw(st.binary(min_size=1, max_size=8)).replace(b"\n", b"") + b'\xff"}'
    return json.dumps(draw(st.lists(st.integers(), max_size=3))).encode()


@FUZZ
@given(bad=bad_records(), before=st.integers(1, 3))
def test_preprocess_refuses_corrupt_records_in_one_line(bad: bytes, before: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "c.jsonl"
        src.write_bytes(b"".join([GOOD.encode() + b"\n"] * before + [bad + b"\n", GOOD.encode() + b"\n"]))
        out = Path(tmp) / "o"
        rc, err = _run(["preprocess", "pretrain", "--input", str(src), "--tokenizer", "shipped", "--output-prefix",
                        str(out), "--no-progress"])
        _assert_one_line_failure(rc, err, out)
        assert f"{src}:{before + 1}:" in err


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from pai_patch.recipes.hf_init import write_random_hf

    out = tmp_path_factory.mktemp("hf") / "hf"
    write_random_hf("qwen2_5", "tiny", out, "shipped", seed=3)
    return out


SHAPE_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
              "architectures", "rope_parameters"]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 5000), st.floats(allow_nan=True),
                 st.text(max_size=6), st.lists(st.integers(0, 9), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                                              st.integers(), max_size=2))


@FUZZ
@given(key=st.sampled_from(SHAPE_KEYS), value=JUNK, delete=st.booleans(), cut=st.integers(0, 40))
def test_hf2mcore_refuses_a_damaged_config_in_one_line(hf_dir: Path, key: str, value, delete: bool, cut: int) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    if delete:
        config.pop(key)
    else:
        config[key] = value
    text = json.dumps(config, indent=1)
    text = text[:-cut] if cut > 30 else text  # sometimes truncated: not JSON at all
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        shutil.copytree(hf_dir, hf)
        (hf / "config.json").write_text(text)
        out = Path(tmp) / "mcore"
        rc, err = _run(["convert", "hf2mcore", "--hf", str(hf), "--mcore", str(out)])
        if rc == 0:  # the damage left a config that still describes these weights (a default, an unused value)
            assert (out / "latest_checkpointed_iteration.txt").is_file()
            return
        _assert_one_line_failure(rc, err, out)


@st.composite
def damaged_header(draw, raw: bytes) -> bytes:
    """``raw`` (a safetensors file) with its header damaged in a way hypothesis picks."""
    (length,) = __import__("struct").unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["length", "json", "dtype", "shape", "offsets", "truncate", "entry"]))
    if kind == "length":  # the length field points past the end, or into the header
        return __import__("struct").pack("<Q", draw(st.sampled_from([len(raw) * 2, 2**63, 3]))) + raw[8:]
    if kind == "json":
        cut = draw(st.integers(1, length - 1))
        return raw[:8] + raw[8:8 + cut] + b"\x00" * (length - cut) + raw[8 + length:]
    if kind == "truncate":  # the data region ends early
        return raw[:draw(st.integers(8 + length, len(raw) - 1))]
    entry = header[name]
    if kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(["F7", "", "I128", "BOOLX"]))
    elif kind == "shape":
        entry["shape"] = draw(st.lists(st.integers(-2, 70000), max_size=3))
    elif kind == "offsets":
        entry["data_offsets"] = draw(st.lists(st.integers(-5, 10**12), max_size=3))
    else:
        header[name] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=4)))
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return __import__("struct").pack("<Q", len(body)) + body + raw[8 + length:]


@FUZZ
@given(data=st.data())
def test_hf2mcore_refuses_a_damaged_safetensors_header_in_one_line(hf_dir: Path, data) -> None:
    raw = (hf_dir / "model.safetensors").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        shutil.copytree(hf_dir, hf)
        (hf / "model.safetensors").write_bytes(data.draw(damaged_header(raw)))
        out = Path(tmp) / "mcore"
        rc, err = _run(["convert", "hf2mcore", "--hf", str(hf), "--mcore", str(out)])
        _assert_one_line_failure(rc, err, out)
        assert "model.safetensors" in err, err
