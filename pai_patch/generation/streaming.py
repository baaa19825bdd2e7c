"""Generated tokens → text pieces as they come, whose concatenation is exactly the non-streamed output.

A token does not always map to text on its own: byte-level BPE splits one UTF-8 character over several
tokens (decoded alone they give U+FFFD), and a tokenizer's clean-up may still change trailing whitespace
when the next token arrives (``" ."`` → ``"."``).  So every step decodes the whole output the way
:func:`~pai_patch.generation.engine.decode_output` does and releases only the part that can no longer
change; :meth:`TextStream.finish` releases the rest.
"""

from __future__ import annotations

from typing import Any

from pai_patch.generation.engine import decode_output

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.tokens: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        """The new text that ``token`` makes final (often ``""``: nothing is final yet)."""
        self.tokens.append(token)
        text = self._decode()
        end = len(text)
        while end > len(self.sent) and (text[end - 1].isspace() or text[end - 1] == REPLACEMENT):
            end -= 1
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):end], text[:end]
        return piece

    def finish(self) -> str:
        """Everything not sent yet; afterwards the pieces add up to the full output."""
        text = self._decode()
        if not text.startswith(self.sent):
            raise RuntimeError(f"streamed text {self.sent[-40:]!r} is not a prefix of the output {text[-40:]!r}; "
                               "this tokenizer's decode changes earlier text when tokens are added")
        piece, self.sent = text[len(self.sent):], text
        return piece

    def _decode(self) -> str:
        return decode_output(self.tokenizer, self.tokens, self.stop_ids)
