"""What callers hand the batching engine and what it gives back: prepared requests, results, the errors it
raises, and the listener protocol it reports to (see :mod:`pixie_integrations.engine`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

from .chunking import ChunkPlan
from .encoding import EncodedPair, PairEncoder
from .ranking import ChunkSpan

__all__ = [
    "EncodesPairs",
    "EngineListener",
    "EngineOverloadedError",
    "PreparedRequest",
    "ScoringResult",
    "ScoringTimeoutError",
]


class EngineOverloadedError(RuntimeError):
    """The engine already holds as much pending work as it may; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float, reason: str = "pending_pairs") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """A hint, in seconds, of when the backlog should have cleared."""
        self.reason = reason
        """Which bound was hit: ``"pending_pairs"`` or ``"pending_tokens"``."""


class ScoringTimeoutError(TimeoutError):
    """A request's deadline passed before all of its pairs were scored; its remaining pairs were dropped."""


@dataclass(frozen=True)
class ScoringResult:
    """What one request of the engine gives back."""

    scores: list[float]
    """One Python float per pair (document), in input order (probability, or logit with ``raw=True``)."""
    truncated: int
    """How many documents were longer than the room left by ``max_length`` and had their ends cut."""
    tokens: int
    """Input tokens of all pairs, template included, after truncation (what a forward pass without reuse sees)."""
    batches: int = 0
    """Forward passes that held pairs of this request (shared with other requests' pairs)."""
    shared_prefix_batches: int = 0
    """Of those, passes whose pairs shared one query prefix."""
    queued_s: float = 0.0
    """Seconds from acceptance to the request's first forward pass."""
    chunks: list[ChunkSpan] | None = None
    """With ``long_documents="chunk"``: each document's winning chunk, in input order; ``None`` otherwise."""


class EncodesPairs(Protocol):
    """What a request is encoded with: a :class:`~pixie_integrations.PixieScorer` (or anything as shaped)."""

    @property
    def encoder(self) -> PairEncoder: ...

    instruction: str


@dataclass(frozen=True, eq=False)
class PreparedRequest:
    """A request tokenized (in the caller's thread, or the engine's encoding pool) and ready to queue.

    Made by :meth:`ScoringEngine.prepare`; its token counts let a caller refuse work before it is queued.
    """

    encoded: tuple[EncodedPair, ...]
    """One encoding per pair, in input order, after truncation."""
    instruction: str
    """The task instruction it was encoded with."""
    truncated: int
    """Documents cut by the length limit (not those cut only by ``max_doc_tokens``)."""
    max_length: int
    """The length limit it was encoded with (the scorer's, or a lower one asked for this request)."""
    chunks: ChunkPlan | None = None
    """With ``long_documents="chunk"``: which of ``encoded`` (chunk inputs) belong to which document."""

    @property
    def pairs(self) -> int:
        """How many inputs run (with chunking, chunk inputs; see :attr:`documents`)."""
        return len(self.encoded)

    @property
    def documents(self) -> int:
        """How many documents the request scores (one score each)."""
        return self.chunks.documents if self.chunks is not None else len(self.encoded)

    @functools.cached_property
    def tokens(self) -> int:
        """Input tokens of all pairs, template included, after truncation."""
        return sum(len(pair) for pair in self.encoded)

    @property
    def pair_tokens(self) -> list[int]:
        """Tokens of each pair's whole input (template, query and document), in input order."""
        return [len(pair) for pair in self.encoded]


class EngineListener(Protocol):
    """What an engine reports as it works (e.g. to Prometheus metrics); register with
    :meth:`ScoringEngine.add_listener`. Called from the engine's threads: keep each call short and never raise."""

    def batch_done(self, *, pairs: int, tokens: int, seconds: float) -> None:
        """One forward pass ran ``pairs`` pairs of ``tokens`` input tokens in ``seconds``."""

    def request_done(
        self, *, outcome: str, pairs: int, tokens: int, truncated: int, queued_s: float, model_s: float
    ) -> None:
        """A request ended: ``outcome`` is ``"ok"``, ``"cancelled"``, ``"timeout"`` or ``"error"``; ``queued_s``
        from acceptance to its first forward pass (or its end, if none ran), ``model_s`` from then to its end."""

    def refused(self, *, reason: str) -> None:
        """A request was refused at admission (``reason``: ``"pending_pairs"`` or ``"pending_tokens"``)."""
