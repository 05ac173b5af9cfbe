"""One batching worker per loaded model: the pairs of concurrent callers share forward passes.

:class:`ScoringEngine` takes scoring work from any number of threads and asyncio tasks. Its one worker thread keeps
every pending pair in a pool and, before each forward pass, plans length-sorted token-budget batches over the whole
pool and runs the batch that holds the oldest pending pair. So a request that arrives while a batch runs joins the
next batch rather than the back of a queue, requests of similar length share batches, and the oldest request always
progresses. A cancelled request (or one past its deadline) is dropped before its pairs run, and the pool is bounded:
past ``max_pending_pairs``, :meth:`ScoringEngine.submit` raises :class:`EngineOverloadedError` at once.

Scores are those of :meth:`PixieScorer.score` (same encoding, same runner, same batching rules), only batched with
other callers' pairs. The server, the adapters' async paths and :meth:`PixieScorer.ascore` run on it; the synchronous
``PixieScorer.score`` keeps running in the caller's thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .batching import plan_pair_batches
from .encoding import EncodedPair

if TYPE_CHECKING:
    from .scorer import PixieScorer, PrefixCache

__all__ = [
    "DEFAULT_MAX_PENDING_PAIRS",
    "EngineListener",
    "EngineOverloadedError",
    "PreparedRequest",
    "ScoringEngine",
    "ScoringResult",
    "ScoringTimeoutError",
    "get_engine",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_PAIRS = 16384
"""Most pairs waiting in one engine; past it new work is refused with :class:`EngineOverloadedError`."""

# The worker thread ends after this long without work (and starts again with the next request), so an idle engine
# holds no thread and a model nobody uses any more can be freed.
_IDLE_EXIT_S = 10.0
# Batches are planned over at most about this many of the oldest pending pairs: with a deep backlog, planning over
# all of it before every forward pass would cost more than it could save.
_PLAN_WINDOW_PAIRS = 4096


class EngineOverloadedError(RuntimeError):
    """The engine already holds as many pending pairs as it may; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """A hint, in seconds, of when the backlog should have cleared."""


class ScoringTimeoutError(TimeoutError):
    """A request's deadline passed before all of its pairs were scored; its remaining pairs were dropped."""


@dataclass(frozen=True)
class ScoringResult:
    """What one request of the engine gives back."""

    scores: list[float]
    """One Python float per pair, in input order (probability, or logit with ``raw=True``)."""
    truncated: int
    """How many documents were longer than the room left by ``max_length`` and had their ends cut."""
    tokens: int
    """Input tokens of all pairs, template included, after truncation (what a forward pass without reuse sees)."""


@dataclass(frozen=True, eq=False)
class PreparedRequest:
    """A request tokenized (in the caller's thread, or the engine's encoding pool) and ready to queue.

    Made by :meth:`ScoringEngine.prepare`; its token counts let a caller refuse work before it is queued.
    """

    scorer: PixieScorer
    """Whose encoder and default instruction it was encoded with."""
    encoded: tuple[EncodedPair, ...]
    """One encoding per pair, in input order, after truncation."""
    truncated: int
    """Documents cut by the length limit (not those cut only by ``max_doc_tokens``)."""
    max_length: int | None
    """The per-request ``max_length`` it was encoded with (``None``: the scorer's)."""

    @property
    def pairs(self) -> int:
        """How many pairs."""
        return len(self.encoded)

    @property
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


@dataclass(eq=False)
class _Job:
    scorer: PixieScorer
    pairs: list[tuple[str, str]]
    instruction: str
    raw: bool
    encode_options: dict[str, Any]
    deadline: float | None
    future: Future[ScoringResult]
    seq: int
    encoded: list[EncodedPair] = field(default_factory=list)
    logits: torch.Tensor | None = None
    done: list[bool] = field(default_factory=list)
    left: int = 0
    truncated: int = 0

    def dropped(self) -> bool:
        return self.future.cancelled() or (self.deadline is not None and time.monotonic() > self.deadline)


class ScoringEngine:
    """A worker thread that scores the pending pairs of every caller in shared, length-sorted batches.

    Get the engine of a scorer's model with :func:`get_engine` (or :attr:`PixieScorer.engine`); build one directly
    only to give it its own pool limit.

    Args:
        scorer: Its model, runner and batching settings (``token_budget``, ``batch_size``, ``reuse_prefix``) are
            the engine's; each request is encoded by the scorer it was submitted with.
        max_pending_pairs: Most pairs waiting (not yet scored) at once; past it :meth:`submit` raises
            :class:`EngineOverloadedError`. A single request larger than this is still accepted when nothing else
            waits, so no request is too large to ever run.
    """

    def __init__(self, scorer: PixieScorer, *, max_pending_pairs: int = DEFAULT_MAX_PENDING_PAIRS) -> None:
        if isinstance(max_pending_pairs, bool) or not isinstance(max_pending_pairs, int) or max_pending_pairs <= 0:
            raise ValueError(f"max_pending_pairs must be a positive int, got {max_pending_pairs!r}")
        self._scorer = scorer
        self.max_pending_pairs = max_pending_pairs
        self._cond = threading.Condition()
        self._intake: list[_Job] = []
        self._pending_pairs = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        # What the worker has done, for monitoring and tests.
        self.batches_run = 0
        """Forward passes run so far."""
        self.pairs_run = 0
        """Pairs scored so far."""
        self.pairs_dropped = 0
        """Pairs of cancelled or expired requests that were dropped before running."""
        self._pairs_per_s = 0.0  # smoothed throughput, for the overload hint

    # -- submitting work -------------------------------------------------------------------------------------------
    @property
    def pending_pairs(self) -> int:
        """Pairs accepted and not yet scored or dropped."""
        return self._pending_pairs

    def submit(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scorer: PixieScorer | None = None,
        instruction: str | None = None,
        raw: bool = False,
        timeout: float | None = None,
        max_length: int | None = None,
        max_doc_tokens: int | None = None,
    ) -> Future[ScoringResult]:
        """Queue checked (query, document) pairs; the future gives a :class:`ScoringResult`.

        Args:
            pairs: (query, document) pairs of ``str`` (check them first: :func:`~pixie_integrations.validation`).
            scorer: Whose encoder (``max_length``, default instruction) to use; default the engine's.
            instruction: Task instruction; ``None`` uses the scorer's.
            raw: Logits instead of probabilities.
            timeout: Seconds from now after which the remaining pairs are dropped and the future fails with
                :class:`ScoringTimeoutError`; ``None`` waits as long as it takes.
            max_length: Most tokens of one whole input for this request (at most the scorer's); only document
                tokens are cut.
            max_doc_tokens: Cut each document to at most this many tokens (the template is never cut).

        Raises:
            EngineOverloadedError: The pool is full.

        Cancelling the future before it is done drops the pairs that have not run yet.
        """
        scorer = scorer if scorer is not None else self._scorer
        job = _Job(
            scorer=scorer,
            pairs=list(pairs),
            instruction=instruction if instruction is not None else scorer.instruction,
            raw=raw,
            encode_options={
                name: value
                for name, value in (("max_length", max_length), ("max_doc_tokens", max_doc_tokens))
                if value is not None
            },
            deadline=None if timeout is None else time.monotonic() + timeout,
            future=Future(),
            seq=next(self._seq),
        )
        if not job.pairs:
            job.future.set_result(ScoringResult(scores=[], truncated=0, tokens=0))
            return job.future
        with self._cond:
            if self._closed:
                raise RuntimeError("this ScoringEngine is closed")
            if self._pending_pairs and self._pending_pairs + len(job.pairs) > self.max_pending_pairs:
                rate = self._pairs_per_s or 1.0
                retry_after = max(1.0, min(60.0, self._pending_pairs / rate))
                raise EngineOverloadedError(
                    f"the scoring queue is full ({self._pending_pairs} pairs waiting, at most "
                    f"{self.max_pending_pairs}); retry in about {retry_after:.0f} s",
                    retry_after=retry_after,
                )
            self._pending_pairs += len(job.pairs)
            self._intake.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="pixie-scoring-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future

    async def ascore(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scorer: PixieScorer | None = None,
        instruction: str | None = None,
        raw: bool = False,
        timeout: float | None = None,
        max_length: int | None = None,
        max_doc_tokens: int | None = None,
    ) -> ScoringResult:
        """:meth:`submit` and await the result; cancelling the awaiting task drops the pairs not yet run."""
        future = self.submit(
            pairs,
            scorer=scorer,
            instruction=instruction,
            raw=raw,
            timeout=timeout,
            max_length=max_length,
            max_doc_tokens=max_doc_tokens,
        )
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def close(self) -> None:
        """Refuse new work, fail what still waits, and let the worker end."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    # -- the worker ------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        pool: list[_Job] = []
        prefix_cache: PrefixCache = None
        while True:
            with self._cond:
                while not self._intake and not pool and not self._closed:
                    if not self._cond.wait(timeout=_IDLE_EXIT_S) and not self._intake:
                        self._thread = None  # a submit from now on starts a new worker
                        return
                if self._closed:
                    jobs, self._intake = pool + self._intake, []
                    self._thread = None
                    for job in jobs:
                        self._finish(job, RuntimeError("the ScoringEngine was closed"))
                    return
                arrived, self._intake = self._intake, []
            for job in arrived:
                if self._encode(job):
                    pool.append(job)
            pool = [job for job in pool if not self._drop_if_gone(job)]
            if not pool:
                continue
            pool.sort(key=lambda job: job.seq)
            prefix_cache = self._run_next_batch(pool, prefix_cache)
            pool = [job for job in pool if job.left]

    def _encode(self, job: _Job) -> bool:
        """Tokenize a new job; a job whose input cannot be encoded fails alone."""
        if self._drop_if_gone(job):
            return False
        try:
            encoded, job.truncated = job.scorer._encoder.encode(job.pairs, job.instruction, **job.encode_options)
        except Exception as exc:  # noqa: BLE001 - e.g. max_length too small for the query: that caller's error
            self._release(len(job.pairs))
            self._finish(job, exc)
            return False
        job.encoded = encoded
        job.left = len(encoded)
        job.logits = torch.empty(len(encoded), dtype=torch.float32)
        job.done = [False] * len(encoded)
        return True

    def _run_next_batch(self, pool: list[_Job], prefix_cache: PrefixCache) -> PrefixCache:
        """Plan batches over every pending pair and run the one holding the oldest request's first pending pair."""
        owners: list[tuple[_Job, int]] = []
        encoded: list[EncodedPair] = []
        for job in pool:  # the oldest requests' pending pairs, up to the planning window
            for i, pair in enumerate(job.encoded):
                if not job.done[i]:
                    owners.append((job, i))
                    encoded.append(pair)
            if len(encoded) >= _PLAN_WINDOW_PAIRS:
                break
        scorer = self._scorer
        plan = plan_pair_batches(encoded, scorer.token_budget, scorer.batch_size, reuse_prefix=scorer.reuse_prefix)
        # Owners are in request order, so index 0 is the oldest request's first pending pair.
        batch, shared = next((b, s) for b, s in plan if 0 in b)
        pairs = [encoded[i] for i in batch]
        state, prefix_cache = scorer._prefix_state(pairs, shared, prefix_cache)
        start = time.perf_counter()
        try:
            logits = scorer._forward_splitting(pairs, state, shared=shared)
        except Exception as exc:  # a failing forward fails the requests in it, not the worker
            logger.exception("A scoring batch of %d pairs failed", len(pairs))
            for job in {owners[i][0] for i in batch}:
                self._release(job.left)
                job.left = 0
                self._finish(job, exc)
            return None
        elapsed = time.perf_counter() - start
        self.batches_run += 1
        self.pairs_run += len(batch)
        rate = len(batch) / max(elapsed, 1e-6)
        self._pairs_per_s = rate if not self._pairs_per_s else 0.8 * self._pairs_per_s + 0.2 * rate
        for row, i in enumerate(batch):
            job, j = owners[i]
            assert job.logits is not None
            job.logits[j] = logits[row]
            job.done[j] = True
            job.left -= 1
        self._release(len(batch))
        for job in {owners[i][0] for i in batch}:
            if not job.left:
                self._complete(job)
        return prefix_cache

    def _drop_if_gone(self, job: _Job) -> bool:
        if not job.dropped():
            return False
        left = job.left if job.encoded else len(job.pairs)
        self.pairs_dropped += left
        self._release(left)
        job.left = 0
        if not job.future.cancelled():
            self._finish(job, ScoringTimeoutError("the request's deadline passed before it was scored"))
        return True

    def _release(self, count: int) -> None:
        with self._cond:
            self._pending_pairs -= count

    def _complete(self, job: _Job) -> None:
        assert job.logits is not None
        scores = job.scorer._scores(
            job.logits,
            raw=job.raw,
            truncated=job.truncated,
            count=len(job.pairs),
            max_length=job.encode_options.get("max_length"),
        )
        tokens = sum(len(pair) for pair in job.encoded)
        self._finish(job, ScoringResult(scores=scores, truncated=job.truncated, tokens=tokens))

    @staticmethod
    def _finish(job: _Job, outcome: ScoringResult | BaseException) -> None:
        if not job.future.set_running_or_notify_cancel():
            return  # cancelled by its caller meanwhile
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)


_engines_lock = threading.Lock()


def get_engine(scorer: PixieScorer) -> ScoringEngine:
    """The one engine of ``scorer``'s loaded model, created (with ``scorer``'s batching settings) on first use.

    Every scorer sharing the model shares this engine and its worker, so at most one forward pass per model runs
    through engines at a time.
    """
    loaded = scorer._loaded
    with _engines_lock:
        engine = getattr(loaded, "_engine", None)
        if engine is None or engine._closed:
            engine = ScoringEngine(scorer)
            loaded._engine = engine  # type: ignore[attr-defined]
    return engine
