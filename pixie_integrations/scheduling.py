"""Which request the batching engine serves next: the scheduling rule, on the engine's pending requests.

1. A request that has not progressed for ``max_wait`` seconds goes first (oldest progress first): nothing starves.
2. Otherwise the lowest ``priority`` (vLLM's meaning: lower runs first).
3. Among equal priorities, fair shares counted in tokens: each request's virtual start time (``vstart``) grows by
   the tokens it has had run, and a new request starts at the virtual time of the request served last, so it is
   served in the next forward pass and several long requests take turns.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from .engine_requests import PreparedRequest, ScoringResult

__all__ = ["PendingRequest", "serving_order"]


@dataclass(eq=False)
class PendingRequest:
    """One accepted request inside the engine: its pairs' progress and its place in the serving order."""

    prepared: PreparedRequest
    raw: bool
    priority: int
    deadline: float | None
    future: Future[ScoringResult]
    seq: int
    accepted: float
    tokens: int
    logits: torch.Tensor
    done: list[bool]
    left: int
    vstart: float = 0.0  # virtual start time: grows by the tokens run for this job
    progressed: float = 0.0  # when a pair of it last ran (or when it was accepted)
    started: float | None = None  # when its first forward pass began
    next_pair: int = 0  # the first index that may still be pending
    tokens_left: int = 0  # input tokens of its pairs not yet run or dropped
    batches: int = 0  # forward passes that held pairs of it
    shared_prefix_batches: int = 0

    def dropped(self) -> bool:
        return self.future.cancelled() or (self.deadline is not None and time.monotonic() > self.deadline)

    def pending(self) -> list[int]:
        while self.next_pair < len(self.done) and self.done[self.next_pair]:
            self.next_pair += 1
        return [i for i in range(self.next_pair, len(self.done)) if not self.done[i]]


def serving_order(pool: list[PendingRequest], *, max_wait: float, now: float | None = None) -> list[PendingRequest]:
    """``pool`` in the order the engine serves it (see the module's rule)."""
    starved_before = (time.monotonic() if now is None else now) - max_wait

    def key(request: PendingRequest) -> tuple[Any, ...]:
        if request.progressed < starved_before:
            return (0, request.progressed, 0.0, request.seq)
        return (1, request.priority, request.vstart, request.seq)

    return sorted(pool, key=key)
