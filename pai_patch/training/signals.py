"""Preemption handling: SIGTERM/SIGINT save at the next step boundary; a second signal exits at once.

The decision is agreed across ranks (an all-reduce of the flag each step), so every rank
stops at the same iteration and the checkpoint it writes is complete.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopRequest:
    def __init__(self, exit_minutes: float | None) -> None:
        self._received: int | None = None
        self._deadline = time.monotonic() + exit_minutes * 60 if exit_minutes else None
        self._previous: dict[int, object] = {}
        self.reason = ""

    @classmethod
    def install(cls, *, exit_minutes: float | None = None) -> "StopRequest":
        request = cls(exit_minutes)
        for sig in SIGNALS:
            request._previous[sig] = signal.signal(sig, request._handle)
        return request

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001
        if self._received is not None:
            log.warning("second signal %d: exiting now without saving", signum)
            os._exit(128 + signum)
        self._received = signum
        log.warning("signal %d received: saving a checkpoint at the end of this step", signum)

    def request(self, reason: str) -> None:
        """Stop at this step boundary for a reason the loop decided (same on every rank)."""
        self.reason = reason

    def requested(self) -> bool:
        local = 0.0
        if self.reason:
            local = 3.0
        elif self._received is not None:
            local, self.reason = 1.0, f"signal {self._received}"
        elif self._deadline is not None and time.monotonic() >= self._deadline:
            local, self.reason = 2.0, "exit_duration_minutes reached"
        flag = torch.tensor([local])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self.reason:
            self.reason = "signal" if flag.item() == 1.0 else "exit_duration_minutes reached"
        return bool(flag.item())
