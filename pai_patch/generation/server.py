"""``python -m pai_patch serve --mcore DIR --family F | --hf DIR [--host H --port P --token T]``.

The streaming websocket service that the seed's deployment client talks to (in place of PAI-EAS/BladeLLM):
the client sends ``{"prompt": "...", ...optional sampling fields}`` and receives one
``{"text": piece, "is_end": false}`` per decoded text piece, then ``{"text": "", "is_end": true}``.
A bad request gets ``{"error": "...", "is_end": true}`` and the connection stays open for the next one.
Any URL path is served (the seed's is ``/api/predict/<service_name>``).  With a token (``--token`` or
``$PAI_SERVE_TOKEN``) a handshake whose ``Authorization`` header differs is refused with HTTP 401.
There is one model, so requests run one at a time; SIGTERM/SIGINT close open connections (1001) and exit 0.
The server runs in one process: Megatron-Core checkpoints are loaded at TP 1 (torch_dist ones, which
training writes, load at any layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import logging
import os
import signal
import threading
import time
from http import HTTPStatus
from typing import Any, Iterator

import torch

from pai_patch.generation.cli import add_model_arguments, add_sampling_arguments, opened_model, sampling_params
from pai_patch.generation.decoders import Decoder
from pai_patch.generation.engine import encode_prompt, iterate_ids, stop_token_ids
from pai_patch.generation.sampling import SamplingParams
from pai_patch.generation.streaming import TextStream

log = logging.getLogger("pai_patch.serve")
ENV_PREFIX = "PAI_SERVE_"  # PAI_SERVE_HOST, PAI_SERVE_PORT, PAI_SERVE_TOKEN: defaults for `make ... serve`
REQUEST_FIELDS: dict[str, type] = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float,
                                   "repetition_penalty": float, "seed": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_sampling_arguments(parser)  # the defaults of requests that do not set these fields
    parser.add_argument("--host", default=os.environ.get(ENV_PREFIX + "HOST", "127.0.0.1"),
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=os.environ.get(ENV_PREFIX + "PORT", "8000"),
                        help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--token", help=f"required Authorization header value (default: ${ENV_PREFIX}TOKEN; "
                                        "none = no check)")


def run(args: argparse.Namespace) -> int:
    defaults = sampling_params(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("serve runs in one process (TP 1); start it without torchrun")
    _log_to_stderr("pai_patch.serve", "websockets.server")  # not the root logger: megatron's INFO lines are noise
    with opened_model(args) as (decoder, tokenizer):
        service = Service(decoder, tokenizer, defaults, chat=args.chat, max_prompt_tokens=args.max_prompt_tokens)
        return serve_until_signal(service, args.host, args.port, args.token or os.environ.get(ENV_PREFIX + "TOKEN"))


def _log_to_stderr(*names: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)


def parse_request(message: str | bytes, defaults: SamplingParams) -> tuple[str, SamplingParams]:
    """The prompt and sampling settings of one request, or a ValueError saying what the request should hold."""
    try:
        request = json.loads(message)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"request is not valid JSON ({getattr(err, 'msg', err)}); "
                         'expected an object like {"prompt": "..."}') from None
    if not isinstance(request, dict):
        raise ValueError(f'expected a JSON object like {{"prompt": "..."}}; got {type(request).__name__}')
    unknown = sorted(set(request) - {"prompt", *REQUEST_FIELDS})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: prompt, {', '.join(REQUEST_FIELDS)}")
    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f'"prompt": expected a non-empty string; got {json.dumps(prompt)[:80]}')
    overrides: dict[str, Any] = {}
    for name, kind in REQUEST_FIELDS.items():
        value = request.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ValueError(f'"{name}": expected {"a number" if kind is float else "an integer"}; got {value!r}')
        overrides[name] = kind(value)
    if overrides.get("max_new_tokens", 0) > defaults.max_new_tokens:  # bounds the KV cache a request can claim
        raise ValueError(f'"max_new_tokens": {overrides["max_new_tokens"]} is more than this server allows '
                         f"(--max-new-tokens {defaults.max_new_tokens})")
    # a request that picks one filter drops the server's other one (top-k and top-p exclude each other)
    if overrides.get("top_p", 0.0) > 0.0 and "top_k" not in overrides:
        overrides["top_k"] = 0
    if overrides.get("top_k", 0) > 0 and "top_p" not in overrides:
        overrides["top_p"] = 0.0
    return prompt, dataclasses.replace(defaults, **overrides)


class Service:
    """One loaded model behind a lock, answering requests as streams of text pieces."""

    def __init__(self, decoder: Decoder, tokenizer: Any, defaults: SamplingParams, *, chat: bool,
                 max_prompt_tokens: int | None) -> None:
        self.decoder, self.tokenizer, self.defaults = decoder, tokenizer, defaults
        # by default a prompt may fill the model's context less the longest answer: a longer one would make the
        # model allocate for positions it was never made for (a 20k-word prompt asked a tiny model for 25 GB)
        room = decoder.context_length - defaults.max_new_tokens
        self.chat, self.max_prompt_tokens = chat, room if max_prompt_tokens is None else min(max_prompt_tokens, room)
        self.stop_ids = stop_token_ids(tokenizer)
        self.lock = threading.Lock()

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Text pieces of the output for ``prompt``; their concatenation equals ``generate``'s output."""
        ids = encode_prompt(self.tokenizer, prompt, chat=self.chat)
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(f"prompt has {len(ids)} tokens, more than this server allows ({self.max_prompt_tokens}: "
                             f"the model's context {self.decoder.context_length} less --max-new-tokens "
                             f"{self.defaults.max_new_tokens}, or --max-prompt-tokens)")
        text, start = TextStream(self.tokenizer, self.stop_ids), time.monotonic()
        generator = torch.Generator().manual_seed(params.seed)
        for token in iterate_ids(self.decoder, ids, params, stop_ids=self.stop_ids, generator=generator):
            piece = text.push(token)
            if piece:
                yield piece
        piece = text.finish()
        if piece:
            yield piece
        log.info("%d prompt tokens -> %d new tokens in %.2fs", len(ids), len(text.tokens), time.monotonic() - start)

    def handle(self, websocket: Any) -> None:
        """One connection: requests in order until the client closes it."""
        from websockets.exceptions import ConnectionClosed

        try:
            self._answer_requests(websocket)
        except ConnectionClosed as err:  # the client left mid-stream, or the server is shutting down
            log.info("connection closed while answering: %s", err)

    def _answer_requests(self, websocket: Any) -> None:
        for message in websocket:
            try:
                prompt, params = parse_request(message, self.defaults)
                with self.lock:
                    for piece in self.stream(prompt, params):
                        websocket.send(json.dumps({"text": piece, "is_end": False}, ensure_ascii=False))
            except ValueError as err:  # raised before the first piece: the request was wrong, not the server
                websocket.send(json.dumps({"error": str(err), "is_end": True}, ensure_ascii=False))
                continue
            except (RuntimeError, MemoryError) as err:  # the model failed on this request; the server stays up
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.error("request failed: %s: %s", type(err).__name__, first)
                websocket.send(json.dumps({"error": f"the model failed on this request ({type(err).__name__}: "
                                                    f"{first})", "is_end": True}, ensure_ascii=False))
                continue
            websocket.send(json.dumps({"text": "", "is_end": True}))


def token_check(token: str) -> Any:
    """A handshake hook that answers 401 unless ``Authorization`` is ``token`` (or ``Bearer token``)."""
    expected = token.encode()

    def process_request(connection: Any, request: Any) -> Any:
        given = request.headers.get("Authorization", "")
        given = given[len("Bearer "):] if given.startswith("Bearer ") else given
        if hmac.compare_digest(given.encode(), expected):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED,
                                  "missing or wrong Authorization header: send the service token\n")

    return process_request


def open_server(service: Service, host: str, port: int, token: str | None) -> Any:
    """A listening (not yet accepting) websocket server for ``service``; port 0 picks a free one."""
    from websockets.sync.server import serve

    try:
        return serve(service.handle, host, port, process_request=token_check(token) if token else None)
    except OSError as err:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def serve_until_signal(service: Service, host: str, port: int, token: str | None) -> int:
    """Accept connections until SIGTERM/SIGINT, then close them (1001 going away) and return 0."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = open_server(service, host, port, token)
    if not token and not _loopback(host):
        log.warning("listening on %s without a token: anyone who reaches this port can use the model; set "
                    "--token (or $%sTOKEN)", host, ENV_PREFIX)
    accept = threading.Thread(target=server.serve_forever, name="websocket-accept")
    accept.start()
    try:
        bound = server.socket.getsockname()[1]
        print(f"serving on ws://{host}:{bound}/api/predict/<name> (any path; "
              f"{'Authorization token required' if token else 'no token check'})", flush=True)
        stop.wait()
        print("stopping: closing connections", flush=True)
    finally:
        server.shutdown(reason="server shutting down")
        accept.join()
    return 0
