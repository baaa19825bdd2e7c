"""Instruction records → chat messages → token ids with a per-token loss mask.

Both SFT paths (the preprocessed idxmap and the raw JSON dataset) go through ``SftEncoder``,
which is what makes them produce the same batches.

Rules (documented in docs/data.md):
* the conversation is rendered with the tokenizer's chat template, or ``FALLBACK_TEMPLATE``
  when it has none;
* loss is on each assistant turn's rendered text (content and the template's end-of-turn
  marker) with trailing whitespace excluded, and on the EOS that ends the sample;
* everything else (system, user, role headers, whitespace between turns) has mask 0;
* the sample ends with ``eos_token``, appended unless the rendered text already ends with it.
"""

from __future__ import annotations

import numpy as np

from pai_patch.data.records import BadRecord, checked_text

FORMATS = ("alpaca", "sharegpt", "messages")
# Used only when the tokenizer has no chat template (e.g. base Llama-2): alpaca's prompt layout.
FALLBACK_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{%- else -%}{{ message['content'] + eos_token + '\\n\\n' }}"
    "{%- endif -%}{%- endfor -%}"
)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _text(record: dict, key: str, path: str, line: int, *, required: bool = True) -> str:
    if key not in record:
        if not required:
            return ""
        raise BadRecord(path, line, "missing key", f"no {key!r} key (keys: {', '.join(list(record)[:8]) or 'none'})")
    return checked_text(record[key], key, path, line)


def to_messages(record, fmt: str, path: str, line: int) -> list[dict[str, str]]:
    """Normalise one alpaca / sharegpt / messages record to ``[{"role", "content"}, ...]`` and check it."""
    if not isinstance(record, dict):
        raise BadRecord(path, line, "not an object", f"got a JSON {type(record).__name__}, expected a {fmt} object")
    messages: list[dict[str, str]] = []
    if fmt == "alpaca":
        system = _text(record, "system", path, line, required=False)
        instruction, extra = _text(record, "instruction", path, line), _text(record, "input", path, line, required=False)
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": "user", "content": f"{instruction}\n{extra}" if extra else instruction},
                     {"role": "assistant", "content": _text(record, "output", path, line)}]
    elif fmt in ("sharegpt", "messages"):
        key, role_key, content_key = ("conversations", "from", "value") if fmt == "sharegpt" else ("messages", "role", "content")
        turns = record.get(key)
        if not isinstance(turns, list) or not turns:
            raise BadRecord(path, line, "missing key", f"{key!r} must be a non-empty list of turns")
        system = _text(record, "system", path, line, required=False)
        messages = [{"role": "system", "content": system}] if system else []
        for turn in turns:
            if not isinstance(turn, dict):
                raise BadRecord(path, line, "bad conversation", f"a turn is a {type(turn).__name__}, expected an object")
            role = _text(turn, role_key, path, line)
            if fmt == "sharegpt":
                role = SHAREGPT_ROLES.get(role, role)
            messages.append({"role": role, "content": _text(turn, content_key, path, line)})
    else:
        raise ValueError(f"unknown SFT format {fmt!r}; valid: {', '.join(FORMATS)}")
    _check_roles(messages, path, line)
    return messages


def _check_roles(messages: list[dict[str, str]], path: str, line: int) -> None:
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2)
    if not body or body != expected:
        raise BadRecord(path, line, "bad conversation",
                        f"roles {roles} (expected an optional system turn, then user/assistant pairs ending with assistant)")
    for m in messages:
        if m["role"] == "assistant" and not m["content"].strip():
            raise BadRecord(path, line, "empty response", "an assistant turn is empty")


class SftEncoder:
    """Render and tokenize conversations; ``encode`` returns (tokens, loss mask) as numpy arrays."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.template = None if tokenizer.chat_template else FALLBACK_TEMPLATE
        self.eos_id, self.eos_text = tokenizer.eos_token_id, tokenizer.eos_token
        adds_bos = tokenizer.bos_token_id is not None and tokenizer("", add_special_tokens=True)["input_ids"] == [tokenizer.bos_token_id]
        self.bos_text = tokenizer.bos_token if adds_bos else None
        self.backend = getattr(tokenizer, "backend_tokenizer", None)

    @property
    def template_name(self) -> str:
        return "fallback" if self.template is not None else "tokenizer chat template"

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, counts_for_loss) pieces."""
        done, pieces = "", []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt, full = self._render(messages[:k], True), self._render(messages[:k + 1], False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise ValueError("the chat template does not render a conversation as a prefix of its continuation; "
                                 "loss masks cannot be located (use a tokenizer without that template or fix it)")
            answer = full[len(prompt):]
            body = answer.rstrip()
            pieces += [(prompt[len(done):], False), (body, True), (answer[len(body):], False)]
            done = full
        pieces.pop()  # whitespace after the last turn: the sample ends at its EOS
        if self.bos_text and not pieces[0][0].startswith(self.bos_text):
            pieces.insert(0, (self.bos_text, False))
        if not done.rstrip().endswith(self.eos_text):
            pieces.append((self.eos_text, True))
        return [(text, loss) for text, loss in pieces if text]

    def encode(self, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        pieces = self.segments(messages)
        texts = [text for text, _ in pieces]
        if self.backend is not None:
            ids = [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        tokens = np.fromiter((t for piece in ids for t in piece), np.int64)
        mask = np.concatenate([np.full(len(piece), loss, np.uint8) for piece, (_, loss) in zip(ids, pieces)])
        return tokens, mask
