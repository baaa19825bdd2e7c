"""``python -m pai_patch serve``: the seed's websocket client, run verbatim, gets ``generate``'s output streamed.

The protocol tests run the server in this process (seconds); the slow ones start ``python -m pai_patch serve``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from test_generate_parity import tiny_hf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pai_patch.generation.decoders import HFDecoder
from pai_patch.generation.engine import generate_file, stop_token_ids
from pai_patch.data.tokenizer import SHIPPED as SHIPPED_TOKENIZER, load_tokenizer
from pai_patch.generation.sampling import SamplingParams
from pai_patch.generation.server import Service, open_server, parse_request
from pai_patch.generation.streaming import TextStream
from tests.conftest import ROOT, free_port

TOKEN = "test-token"
PROMPTS = ["What's the capital of Canada?", "你好，请介绍一下北京。"]
MAX_NEW = 24


def seed_client(url: str, token: str, prompts: list[str]) -> str:
    """The seed's deployment client (seed 002), verbatim but for the URL, token and prompts; returns its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        from websockets.sync.client import connect

        def hello():
            headers = {"Authorization": token}
            # URL 也从EAS控制台 - 查看调用信息处获取，把 http:// 换成 ws:// 即可。
            with connect(url, additional_headers=headers) as websocket:
                for p in prompts:
                    print(f"Prompt : {p}")
                    websocket.send(json.dumps({"prompt": p}))
                    while True:
                        msg = websocket.recv()
                        msg = json.loads(msg)
                        if msg['is_end']:
                            break
                        print(msg['text'], end="", flush=True)
                    print()
                    print("-" * 40)

        hello()
    return out.getvalue()


def start_server(*args: str, token: str | None = None) -> tuple[subprocess.Popen, str]:
    """``serve ARGS`` on a free port; returns the process and its ws:// URL once it accepts connections."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_SERVE_")}
    cmd = [sys.executable, "-m", "pai_patch", "serve", *args, "--port", str(port), "--max-new-tokens", str(MAX_NEW),
           *(["--token", token] if token else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # ends when the process exits
        lines.append(line)
        if line.startswith("serving on "):
            return proc, f"ws://127.0.0.1:{port}/api/predict/tiny"
    raise AssertionError(f"server exited ({proc.wait()}) before serving:\n{''.join(lines)[-3000:]}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        proc.kill()


def generate_cli(tmp: Path, *source: str) -> dict[str, str]:
    """Greedy ``python -m pai_patch generate`` outputs for PROMPTS (the non-streamed reference)."""
    prompts, out = tmp / "prompts.jsonl", tmp / "out.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pai_patch", "generate", *source, "--input", str(prompts),
                           "--output", str(out), "--max-new-tokens", str(MAX_NEW)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {row["prompt"]: row["output"] for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


def expected_transcript(outputs: dict[str, str]) -> str:
    return "".join(f"Prompt : {p}\n{outputs[p]}\n{'-' * 40}\n" for p in PROMPTS)


def receive(websocket) -> tuple[list[str], dict]:  # noqa: ANN001
    """The text pieces of one answer and its final message."""
    pieces = []
    while True:
        msg = json.loads(websocket.recv(timeout=120))
        if msg["is_end"]:
            return pieces, msg
        pieces.append(msg["text"])


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, str]]]:
    """The server (in this process, with a token) on a tiny HF model, and ``generate_file``'s outputs for PROMPTS."""
    tokenizer = load_tokenizer(SHIPPED_TOKENIZER)
    decoder = HFDecoder(tiny_hf("qwen2_5"))
    params = SamplingParams(max_new_tokens=MAX_NEW)
    rows = generate_file(decoder, tokenizer, PROMPTS, "unused", params, write=False)
    server = open_server(Service(decoder, tokenizer, params, chat=False, max_prompt_tokens=None), "127.0.0.1", 0,
                         TOKEN)
    accept = threading.Thread(target=server.serve_forever)
    accept.start()
    try:
        yield (f"ws://127.0.0.1:{server.socket.getsockname()[1]}/api/predict/tiny",
               {row["prompt"]: row["output"] for row in rows})
    finally:
        server.shutdown()
        accept.join()


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    tiny_hf("qwen2_5").save_pretrained(tmp_path / "hf")
    for f in SHIPPED_TOKENIZER.iterdir():
        shutil.copy(f, tmp_path / "hf")
    return tmp_path / "hf"


def test_text_stream_pieces_add_up_to_the_decoded_output() -> None:
    tokenizer = load_tokenizer(SHIPPED_TOKENIZER)
    text = "北京是中国的首都 😀 . Ok\n\nnext  line 's über"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, stop_token_ids(tokenizer))
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)  # no half characters, though some tokens are parts of one
    assert any(tokenizer.decode([i]) == "\ufffd" for i in ids)
    assert sum(1 for p in pieces if p) > 10


def test_request_fields_override_the_server_defaults() -> None:
    defaults = SamplingParams(max_new_tokens=64)
    prompt, params = parse_request('{"prompt": "hi", "top_p": 0.9, "temperature": 0.7, "max_new_tokens": 5}',
                                   defaults)
    assert prompt == "hi" and params == SamplingParams(top_k=0, top_p=0.9, temperature=0.7, max_new_tokens=5)
    assert parse_request('{"prompt": "hi"}', defaults)[1] == defaults
    for message, error in [("{bad", "not valid JSON"), ('["hi"]', "expected a JSON object"),
                           ("{}", '"prompt": expected a non-empty string'),
                           ('{"prompt": "hi", "topk": 3}', "unknown field(s) topk"),
                           ('{"prompt": "hi", "top_k": "5"}', '"top_k": expected an integer'),
                           ('{"prompt": "hi", "temperature": 0}', "--temperature 0.0: expected a value > 0"),
                           ('{"prompt": "hi", "max_new_tokens": 65}', "more than this server allows")]:
        with pytest.raises(ValueError, match=re.escape(error)):
            parse_request(message, defaults)


def test_seed_client_prints_the_generate_output(served: tuple[str, dict[str, str]]) -> None:
    url, outputs = served
    assert seed_client(url, TOKEN, PROMPTS) == expected_transcript(outputs)
    assert all(outputs.values())


def test_answer_is_streamed_in_pieces(served: tuple[str, dict[str, str]]) -> None:
    url, outputs = served
    with connect(url, additional_headers={"Authorization": TOKEN}) as websocket:
        websocket.send(json.dumps({"prompt": PROMPTS[1]}))
        pieces, end = receive(websocket)
    assert end == {"text": "", "is_end": True}
    assert len(pieces) > 1 and all(pieces) and "".join(pieces) == outputs[PROMPTS[1]]


def test_wrong_or_missing_token_is_refused(served: tuple[str, dict[str, str]]) -> None:
    url, _ = served
    for headers in ({"Authorization": "wrong"}, {}):
        with pytest.raises(InvalidStatus) as err:
            connect(url, additional_headers=headers)
        assert err.value.response.status_code == 401
        assert b"Authorization" in err.value.response.body


def test_bad_request_gets_an_error_and_the_connection_stays_usable(served: tuple[str, dict[str, str]]) -> None:
    url, outputs = served
    with connect(url, additional_headers={"Authorization": TOKEN}) as websocket:
        for bad, error in (("not json", "not valid JSON"), ('{"query": "hi"}', "unknown field(s) query"),
                           ('{"prompt": "hi", "top_k": 3, "top_p": 0.5}', "set only one of them")):
            websocket.send(bad)
            pieces, end = receive(websocket)
            assert not pieces and end["is_end"] and error in end["error"]
        websocket.send(json.dumps({"prompt": PROMPTS[0]}))
        pieces, end = receive(websocket)
        assert "".join(pieces) == outputs[PROMPTS[0]] and "error" not in end
        websocket.send(json.dumps({"prompt": PROMPTS[0], "max_new_tokens": 3, "top_k": 5, "seed": 7}))
        sampled, _ = receive(websocket)
        websocket.send(json.dumps({"prompt": PROMPTS[0], "max_new_tokens": 3, "top_k": 5, "seed": 7}))
        assert receive(websocket)[0] == sampled  # a request's seed makes its sampling reproducible


def test_hostile_requests_get_one_line_errors_and_the_server_stays_up(served: tuple[str, dict[str, str]],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt longer than the model's context made the server try to allocate 25.6 GB and close with 1011."""
    url, outputs = served
    with connect(url, additional_headers={"Authorization": TOKEN}) as websocket:
        websocket.send(json.dumps({"prompt": "word " * 20000}))
        pieces, end = receive(websocket)
        assert not pieces and end["is_end"] and "more than this server allows" in end["error"]
        assert "the model's context" in end["error"]
        monkeypatch.setattr(HFDecoder, "start", lambda *_: (_ for _ in ()).throw(RuntimeError("out of memory\nmore")))
        websocket.send(json.dumps({"prompt": PROMPTS[0]}))
        pieces, end = receive(websocket)
        assert end == {"error": "the model failed on this request (RuntimeError: out of memory)", "is_end": True}
        monkeypatch.undo()
        websocket.send(json.dumps({"prompt": PROMPTS[0]}))
        assert "".join(receive(websocket)[0]) == outputs[PROMPTS[0]]


def test_hosts_that_count_as_loopback_for_the_no_token_warning() -> None:
    from pai_patch.generation.server import _loopback

    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1")
    assert not _loopback("0.0.0.0") and not _loopback("10.0.0.5") and not _loopback("my-host")


@pytest.mark.slow
def test_cli_serves_the_generate_output_and_stops_on_sigterm(hf_dir: Path) -> None:
    """``serve --hf`` in its own process: the seed client prints ``generate``'s output; SIGTERM closes and exits 0."""
    with ThreadPoolExecutor(1) as pool:
        outputs = pool.submit(generate_cli, hf_dir.parent, "--hf", str(hf_dir))
        proc, url = start_server("--hf", str(hf_dir), token=TOKEN)
    try:
        assert seed_client(url, TOKEN, PROMPTS) == expected_transcript(outputs.result())
        with pytest.raises(InvalidStatus, match="HTTP 401"):
            connect(url, additional_headers={"Authorization": "wrong"})
        with connect(url, additional_headers={"Authorization": TOKEN}) as websocket:
            websocket.send(json.dumps({"prompt": "hi", "max_new_tokens": 2}))
            receive(websocket)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                websocket.recv(timeout=60)
        assert closed.value.rcvd.code == 1001 and closed.value.rcvd.reason == "server shutting down"
    finally:
        assert stop_server(proc) == 0


def test_serve_stage_serves_the_latest_sft_else_pretrain_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from pai_patch.recipes.stages import STAGES, run_stage

    monkeypatch.setenv("DRY_RUN", "1")
    assert "serve" not in STAGES  # `pipeline` runs STAGES; a server would never let it finish
    for stage in ("pretrain", "sft"):
        (tmp_path / stage / "checkpoint").mkdir(parents=True)
        (tmp_path / stage / "checkpoint" / "latest_checkpointed_iteration.txt").write_text("10\n")
        run_stage("serve", ["recipe=qwen2_5", f"output_dir={tmp_path}"])
        command = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("+ "))
        assert f" -m pai_patch serve --mcore {tmp_path / stage / 'checkpoint'} --family qwen2_5" in command


@pytest.mark.slow
def test_mcore_checkpoint_served_like_generate(tmp_path: Path) -> None:
    """HF → Megatron-Core (torch_dist) → ``serve --mcore``: the seed client prints ``generate --mcore``'s output."""
    from pai_patch.convert.engine import hf_to_mcore
    from pai_patch.models import get_family
    from pai_patch.models.base import Runtime
    from pai_patch.parallel import model_parallel

    tiny_hf("llama2").save_pretrained(tmp_path / "hf")
    with model_parallel(Runtime()):  # the torch_dist writer needs a process group
        hf_to_mcore(get_family("llama2"), "tiny", tmp_path / "hf", tmp_path / "mcore")
    source = ("--mcore", str(tmp_path / "mcore"), "--family", "llama2", "--size", "tiny")
    with ThreadPoolExecutor(1) as pool:
        outputs = pool.submit(generate_cli, tmp_path, *source)
        proc, url = start_server(*source)
    try:
        assert seed_client(url, "", PROMPTS) == expected_transcript(outputs.result())
    finally:
        assert stop_server(proc) == 0
