"""Pretrain preprocessing: input kinds, worker equality, and every bad-input case named by file and line."""

from __future__ import annotations

import gzip
import json
import functools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pai_patch.cli import CliError, main
from pai_patch.data import pretrain as pretrain_module, records
from pai_patch.data.indexed import IndexedReader
from pai_patch.data.pretrain import preprocess_pretrain
from pai_patch.data.records import BadRecord
from pai_patch.data.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pai_patch" / "assets" / "corpus" / "pretrain.jsonl"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("shipped")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def _tokens(prefix) -> list[list[int]]:
    ds = IndexedReader.open(prefix)
    return [ds.sequence(i).tolist() for i in range(len(ds))]


GOOD = [{"text": "one fish"}, {"text": "two fish"}, {"text": "red fish"}]


def test_jsonl_gz_folder_and_array_give_same_tokens(tmp_path, tok):
    plain = _jsonl(tmp_path / "a.jsonl", GOOD)
    preprocess_pretrain(plain, tok, tmp_path / "plain", progress=False)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(plain.read_text())
    preprocess_pretrain(tmp_path / "b.jsonl.gz", tok, tmp_path / "gz", progress=False)
    (tmp_path / "arr.json").write_text(json.dumps(GOOD, indent=2))
    preprocess_pretrain(tmp_path / "arr.json", tok, tmp_path / "arr", progress=False)
    expected = _tokens(tmp_path / "plain_text_document")
    assert expected == [tok.encode(r["text"]) + [tok.eos_token_id] for r in GOOD]
    assert _tokens(tmp_path / "gz_text_document") == expected
    assert _tokens(tmp_path / "arr_text_document") == expected
    folder = tmp_path / "folder"
    folder.mkdir()
    _jsonl(folder / "1.jsonl", GOOD[:2])
    _jsonl(folder / "2.jsonl", GOOD[2:])
    (folder / "notes.txt").write_text("ignored")
    summary = preprocess_pretrain(folder, tok, tmp_path / "dir", progress=False)
    assert summary.files == 2 and _tokens(tmp_path / "dir_text_document") == expected


def test_json_key_names_output_and_no_eod(tmp_path, tok):
    src = _jsonl(tmp_path / "c.jsonl", [{"content": "abc"}])
    preprocess_pretrain(src, tok, tmp_path / "o", json_key="content", append_eod=False, progress=False)
    assert _tokens(tmp_path / "o_content_document") == [tok.encode("abc")]


def test_two_workers_write_identical_files(tmp_path, tok, monkeypatch):
    # Small chunks, so the pool really interleaves many of them.
    monkeypatch.setattr(pretrain_module, "iter_chunks", functools.partial(records.iter_chunks, chunk_bytes=1 << 16))
    one = preprocess_pretrain(CORPUS, tok, tmp_path / "w1", workers=1, progress=False)
    two = preprocess_pretrain(CORPUS, tok, tmp_path / "w2", workers=2, progress=False)
    assert (one.documents, one.tokens) == (two.documents, two.tokens)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1_text_document{ext}").read_bytes() == (tmp_path / f"w2_text_document{ext}").read_bytes()


class _EncoderKilledOnSecondChunk(pretrain_module._Encoder):
    """Stands for a worker the kernel kills (OOM) or that crashes in native code."""

    def __call__(self, chunk):
        if chunk.lines[0] > 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(chunk)


def test_a_worker_that_dies_fails_the_run_instead_of_hanging(tmp_path, tok, monkeypatch):
    src = _jsonl(tmp_path / "c.jsonl", GOOD * 4)
    monkeypatch.setattr(pretrain_module, "iter_chunks", functools.partial(records.iter_chunks, chunk_bytes=16))
    encoder = _EncoderKilledOnSecondChunk(tok, "text", True, False, np.dtype(np.uint16))
    with pytest.raises(pretrain_module.WorkerDied, match="tokenizer worker process died.*--workers 1"):
        list(pretrain_module._encoded_chunks([src], encoder, workers=2))


BAD_LINES = [
    ("{\"text\": \"ok\"", "malformed JSON"),
    ("{\"body\": \"no text key\"}", "missing key"),
    ("{\"text\": 42}", "non-string value"),
    ("{\"text\": [\"a\", \"b\"]}", "non-string value"),
    ("{\"text\": \"\"}", "empty document"),
    ("[1, 2]", "not an object"),
    ("{\"text\": \"scraped \\ud800 text\"}", "invalid text"),  # a lone surrogate: no tokenizer encodes it
]


@pytest.mark.parametrize("line,reason", BAD_LINES)
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_names_file_line_and_leaves_nothing(tmp_path, tok, line, reason, workers):
    src = _jsonl(tmp_path / "c.jsonl", [GOOD[0], GOOD[1], line, GOOD[2]])
    with pytest.raises(BadRecord) as err:
        preprocess_pretrain(src, tok, tmp_path / "out", workers=workers, progress=False)
    assert err.value.reason == reason and err.value.line == 3
    assert str(err.value).startswith(f"{src}:3: {reason}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_skip_bad_lines_counts_reasons(tmp_path, tok):
    src = _jsonl(tmp_path / "c.jsonl", [GOOD[0]] + [line for line, _ in BAD_LINES] + ["", GOOD[1]])
    summary = preprocess_pretrain(src, tok, tmp_path / "out", skip_bad_lines=True, progress=False,
                                  max_bad_fraction=1)
    assert summary.documents == 2
    assert summary.skipped == {"malformed JSON": 1, "missing key": 1, "non-string value": 2, "empty document": 1,
                               "not an object": 1, "invalid text": 1}
    assert "2 non-string value" in str(summary)
    assert len(_tokens(tmp_path / "out_text_document")) == 2


def test_skip_bad_lines_with_workers_skips_text_the_tokenizer_refuses(tmp_path, tok):
    src = _jsonl(tmp_path / "c.jsonl", GOOD + [BAD_LINES[-1][0]])
    summary = preprocess_pretrain(src, tok, tmp_path / "out", workers=2, skip_bad_lines=True, progress=False,
                                  max_bad_fraction=0.25)
    assert summary.documents == 3 and summary.skipped == {"invalid text": 1}


@pytest.mark.parametrize("preamble", [b"\xef\xbb\xbf", b"\xef\xbb\xbf\n \n", b" " * 100 + b"\n\n"])
def test_json_array_after_a_bom_or_blanks_is_read_as_an_array(tmp_path, tok, preamble):
    src = tmp_path / "a.json"
    src.write_bytes(preamble + json.dumps(GOOD * 2 + [{"text": 1}], indent=1).encode())
    summary = preprocess_pretrain(src, tok, tmp_path / "out", skip_bad_lines=True, progress=False,
                                  max_bad_fraction=0.2)
    assert summary.documents == 6 and summary.skipped == {"non-string value": 1}
    with pytest.raises(BadRecord) as err:
        preprocess_pretrain(src, tok, tmp_path / "out", progress=False)
    assert err.value.line == preamble.count(b"\n") + 20  # the line of the bad element, counted from the file start


def test_skipping_more_than_max_bad_fraction_stops_and_writes_nothing(tmp_path, tok):
    src = _jsonl(tmp_path / "c.jsonl", [GOOD[0]] + ["{bad"] * 4)
    with pytest.raises(ValueError, match=r"skipped 4 of 5 records \(80\.0%: 4 malformed JSON\), more than "
                                         r"--max-bad-fraction 0\.5 allows"):
        preprocess_pretrain(src, tok, tmp_path / "out", skip_bad_lines=True, progress=False, max_bad_fraction=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    assert preprocess_pretrain(src, tok, tmp_path / "out", skip_bad_lines=True, progress=False,
                               max_bad_fraction=0.8).documents == 1


KILLED_WRITER = """
import os, signal, sys
from pai_patch.data import indexed
from pai_patch.data.pretrain import preprocess_pretrain
from pai_patch.data.tokenizer import load_tokenizer
indexed.IndexedWriter.add_documents = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
preprocess_pretrain(sys.argv[1], load_tokenizer("shipped"), sys.argv[2], progress=False)
"""


def test_rerun_removes_the_temps_of_a_killed_run_only(tmp_path, tok):
    src = _jsonl(tmp_path / "c.jsonl", GOOD)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(src), str(tmp_path / "out")], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert [name.split(".tmp-")[0] for name in left] == [".out_text_document.bin", ".out_text_document.idx"]
    host = socket.gethostname()
    kept = [f".out_text_document.bin.tmp-{host}-{os.getpid()}-live0000",  # a writer still running
            ".out_text_document.bin.tmp-otherhost-1-abcdefgh",  # another host's, on a shared file system
            ".out_text_document.bin.tmp-oldname"]  # no writer in the name
    for name in kept:
        (tmp_path / name).touch()
    preprocess_pretrain(src, tok, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(kept)


def test_corrupt_gzip_is_fatal_even_when_skipping(tmp_path, tok):
    data = gzip.compress(("".join(json.dumps(r) + "\n" for r in GOOD * 2000)).encode())
    bad = tmp_path / "c.jsonl.gz"
    bad.write_bytes(data[: len(data) // 2])  # truncated stream
    with pytest.raises(ValueError, match=r"c\.jsonl\.gz:\d+: unreadable or corrupt file"):
        preprocess_pretrain(bad, tok, tmp_path / "out", skip_bad_lines=True, progress=False)
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        preprocess_pretrain(bad, tok, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl.gz"]


def test_unreadable_inputs(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="no such input"):
        preprocess_pretrain(tmp_path / "missing.jsonl", tok, tmp_path / "o", progress=False)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        preprocess_pretrain(tmp_path / "empty_dir", tok, tmp_path / "o", progress=False)
    (tmp_path / "bin.jsonl").write_bytes(b"{\"text\": \"\xff\xfe\"}\n")
    with pytest.raises(BadRecord, match="bin.jsonl:1: malformed JSON"):
        preprocess_pretrain(tmp_path / "bin.jsonl", tok, tmp_path / "o", progress=False)


def test_malformed_json_array_names_line(tmp_path, tok):
    src = tmp_path / "a.json"
    src.write_text('[\n {"text": "a"},\n {"text": "b",,}\n]\n')
    with pytest.raises(BadRecord, match=r"a\.json:3: malformed JSON"):
        preprocess_pretrain(src, tok, tmp_path / "o", progress=False)
    src.write_text('[\n {"text": "a"}\n')
    with pytest.raises(BadRecord, match="not closed"):
        preprocess_pretrain(src, tok, tmp_path / "o", progress=False)


def test_tokenizer_loading(tmp_path):
    assert load_tokenizer("PaiTinyTokenizer").eos_token_id == load_tokenizer("shipped").eos_token_id
    assert len(load_tokenizer("Qwen2Tokenizer", str(ROOT / "pai_patch" / "assets" / "tokenizer"))) > 0
    with pytest.raises(CliError, match=r"DeepSeekV2Tokenizer.*TOKENIZER_DIR\): not given.*hf=\): not given.*loaded: not"):
        load_tokenizer("DeepSeekV2Tokenizer")
    with pytest.raises(CliError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(CliError, match=r"has none of tokenizer\.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CliError, match=f"tokenizer directory {tmp_path} does not load"):
        load_tokenizer(str(tmp_path))


def test_cli_pretrain_and_errors(tmp_path, capsys):
    src = _jsonl(tmp_path / "c.jsonl", GOOD + ["{\"text\": 1}"])
    args = ["preprocess", "pretrain", "--input", str(src), "--tokenizer", "shipped", "--output-prefix",
            str(tmp_path / "o"), "--append-eod", "--no-progress"]
    assert main(args) == 2
    assert f"error: {src}:4: non-string value" in capsys.readouterr().err
    assert main(args + ["--skip-bad-lines", "--split-sentences", "no"]) == 2
    assert ("error: --skip-bad-lines skipped 1 of 4 records (25.0%: 1 non-string value), more than "
            "--max-bad-fraction 0.01 allows") in capsys.readouterr().err
    assert main(args + ["--skip-bad-lines", "--max-bad-fraction", "0.25", "--split-sentences", "no"]) == 0
    assert "3 documents" in capsys.readouterr().out
    assert main(args + ["--split-sentences"]) == 2
    assert main(["preprocess", "pretrain", "--input", str(src), "--tokenizer", str(tmp_path), "--output-prefix",
                 str(tmp_path / "x")]) == 2
    assert "does not load" in capsys.readouterr().err


@pytest.mark.slow
def test_seed_wrapper_script(tmp_path):
    """The seed's positional interface: INPUT_JSON TOKENIZER_NAME JSON_KEY OUTPUT_DIR TOKENIZER_DIR."""
    script = ROOT / "toolkits" / "pretrain_data_preprocessing" / "run_make_pretraining_dataset_megatron.sh"
    src = _jsonl(tmp_path / "c.json", GOOD)
    tok_dir = ROOT / "pai_patch" / "assets" / "tokenizer"
    out = subprocess.run(["bash", str(script), str(src), "Qwen2Tokenizer", "text", str(tmp_path / "out"), str(tok_dir)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    prefix = tmp_path / "out" / "mmap_qwen2_datasets_text_document"
    assert _tokens(prefix) == [load_tokenizer("shipped").encode(r["text"]) + [0] for r in GOOD]
    bad = subprocess.run(["bash", str(script), str(src)], capture_output=True, text=True)
    assert bad.returncode != 0 and "usage" in bad.stderr.lower()


def test_find_tokenizer_looks_in_explicit_then_hf_then_checkpoint(tmp_path):
    from pai_patch.data.tokenizer import SHIPPED, copy_tokenizer_files, find_tokenizer

    hf, ckpt, empty = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "empty"
    for d in (hf, ckpt, empty):
        d.mkdir()
    assert "tokenizer.json" in copy_tokenizer_files(SHIPPED, hf)
    copy_tokenizer_files(SHIPPED, ckpt)
    assert find_tokenizer("Qwen2Tokenizer", explicit=empty, hf=hf, checkpoint=ckpt) == hf
    assert find_tokenizer("Qwen2Tokenizer", checkpoint=ckpt) == ckpt
    assert find_tokenizer("Qwen2Tokenizer", explicit=ckpt, hf=hf) == ckpt
    with pytest.raises(CliError, match=f"the checkpoint being loaded: {empty}"):
        find_tokenizer("LLamaTokenizer", hf=empty, checkpoint=empty)
