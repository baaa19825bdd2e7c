"""Sampling settings (validated like the seed's ``run_text_generation`` script) and next-token choice.

Semantics follow Megatron's text-generation ``sample()``: ``top_k=1`` is greedy; otherwise the
logits are divided by the temperature and filtered by top-k *or* top-p (the seed forbids both),
then sampled.  The repetition penalty is transformers' (CTRL paper): every token already in the
prompt or the output has its logit divided by the penalty when positive, multiplied when negative,
so greedy output with a penalty still matches ``generate(repetition_penalty=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    top_k: int = 1
    top_p: float = 0.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"--top-k {self.top_k}: expected 0 (off), 1 (greedy) or more")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"--top-p {self.top_p}: expected a value in [0, 1] (0 = off)")
        if self.top_k > 0 and self.top_p > 0.0:
            raise ValueError(f"--top-k {self.top_k} and --top-p {self.top_p}: set only one of them, "
                             "the other must be 0 (as in the seed's TOP_K/TOP_P)")
        if not self.temperature > 0.0:
            raise ValueError(f"--temperature {self.temperature}: expected a value > 0")
        if self.repetition_penalty < 1.0:
            raise ValueError(f"--repetition-penalty {self.repetition_penalty}: expected >= 1.0 (1.0 = off)")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: expected >= 1")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    logits = logits.clone()
    logits.scatter_(-1, seen, torch.where(picked < 0, picked * penalty, picked / penalty))
    return logits


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.size(-1))
    threshold = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``p`` (always at least one)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= p  # mass before this token already reaches p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_token(logits: torch.Tensor, seen: list[int], params: SamplingParams,
                 generator: torch.Generator | None = None) -> int:
    """The next token for one sequence from its last-position logits ``[vocab]``."""
    logits = apply_repetition_penalty(logits.float(), torch.tensor(seen, dtype=torch.long), params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k > 1:
        logits = filter_top_k(logits, params.top_k)
    elif params.top_p > 0.0:
        logits = filter_top_p(logits, params.top_p)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
