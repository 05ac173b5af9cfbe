"""One batching worker per loaded model: the pairs of concurrent callers share forward passes, fairly.

:class:`ScoringEngine` takes scoring work from any number of threads and asyncio tasks. Requests are tokenized
before they reach it (in the caller's thread, or for ``async`` callers in the engine's small encoding pool), so its
one worker thread only plans and runs forward passes. Before each pass it picks the request to serve next and runs
the planned batch (length-sorted, within the token budget) that holds that request's next pair; other requests'
pairs of similar length fill the rest of the batch.

Which request goes next (the scheduling rule, :mod:`.scheduling`):

1. A request that has waited more than ``max_wait`` seconds since it last progressed goes first (oldest first), so
   nothing starves.
2. Otherwise the lowest ``priority`` (vLLM's meaning: lower runs first; default 0).
3. Among equal priorities, fair shares: each request carries a virtual start time that grows by the tokens it has
   had run; a new request starts at the virtual time of the request served last. So a request that arrives while
   a long one runs is served in the very next forward pass, and several long requests take turns.

A query's prefix state (its key/value cache) is kept while any pending pair needs it. A cancelled request (or one
past its deadline) is dropped before its pairs run, and the pool is bounded in pairs and in tokens: past either,
:meth:`ScoringEngine.submit` raises :class:`EngineOverloadedError` at once.

Scores are those of :meth:`PixieScorer.score` (same encoding, same :class:`~pixie_integrations.pipeline
.BatchPipeline`), only batched with other callers' pairs. The engine's batching settings are its model's: the
defaults for the model's device (or those of the scorer an engine is built from, or given to
:func:`configure_engine`), stated once, never those of whichever scorer happened to ask first.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .chunking import LongDocuments, log_dropped_chunks
from .encoding import EncodedPair, PairEncoder
from .engine_requests import (
    EncodesPairs,
    EngineListener,
    EngineOverloadedError,
    PreparedRequest,
    ScoringResult,
    ScoringTimeoutError,
)
from .loading import LoadedModel
from .pipeline import BatchPipeline, BatchSettings, log_truncated, scores_from_logits
from .scheduling import PendingRequest, serving_order
from .template import DEFAULT_INSTRUCTION

__all__ = [
    "DEFAULT_MAX_PENDING_PAIRS",
    "DEFAULT_MAX_WAIT_S",
    "EngineListener",
    "EngineOverloadedError",
    "PreparedRequest",
    "ScoringEngine",
    "ScoringResult",
    "ScoringTimeoutError",
    "configure_engine",
    "get_engine",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_PAIRS = 16384
"""Most pairs waiting in one engine; past it new work is refused with :class:`EngineOverloadedError`."""
DEFAULT_MAX_WAIT_S = 10.0
"""A request that has waited this long since it last progressed is served next, whatever its priority or share."""

# The worker thread ends after this long without work (and starts again with the next request), so an idle engine
# holds no thread and a model nobody uses any more can be freed.
_IDLE_EXIT_S = 10.0
# Batches are planned over at most about this many pending pairs, taken in scheduling order: with a deep backlog,
# planning over all of it before every forward pass would cost more than it could save.
_PLAN_WINDOW_PAIRS = 4096
# Prefix states held at once (each is a few MB for PIXIE); only those of pending pairs are kept.
_PREFIX_CACHE_SIZE = 16
# Threads tokenizing async callers' requests; the tokenizer lock serializes most of the work anyway.
_ENCODE_THREADS = 2


class ScoringEngine:
    """A worker thread that scores the pending pairs of every caller in shared, fairly scheduled batches.

    Get the engine of a model with :func:`get_engine` (or :attr:`PixieScorer.engine`); build one directly only to
    give it limits or batching settings of its own.

    Args:
        source: A :class:`~pixie_integrations.PixieScorer` (its model, its encoder and instruction as the defaults
            of :meth:`submit`, and its batching settings) or a loaded model (the device's default settings).
        max_pending_pairs: Most pairs waiting (not yet scored) at once; past it :meth:`submit` raises
            :class:`EngineOverloadedError`. A single request larger than this is still accepted when nothing else
            waits, so no request is too large to ever run.
        max_pending_tokens: Most input tokens waiting at once, as ``max_pending_pairs``; ``None``: no bound.
        max_wait: Seconds after which a request that has not progressed is served first (the age bound).
        pipeline: The batch pipeline to run (default: the scorer's, or the model's defaults).
    """

    def __init__(
        self,
        source: Any,
        *,
        max_pending_pairs: int = DEFAULT_MAX_PENDING_PAIRS,
        max_pending_tokens: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        pipeline: BatchPipeline | None = None,
    ) -> None:
        _check_positive_int("max_pending_pairs", max_pending_pairs)
        if max_pending_tokens is not None:
            _check_positive_int("max_pending_tokens", max_pending_tokens)
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or max_wait <= 0:
            raise ValueError(f"max_wait must be a positive number of seconds, got {max_wait!r}")
        if isinstance(source, LoadedModel):
            self._loaded = source
            self._encoder = PairEncoder(source, max_length=None)
            self._instruction = DEFAULT_INSTRUCTION
        else:
            self._loaded = source.loaded_model
            self._encoder = source.encoder
            self._instruction = source.instruction
            if pipeline is None:
                pipeline = source.pipeline
        self._pipeline = pipeline if pipeline is not None else BatchPipeline.build(self._loaded)
        self.max_pending_pairs = max_pending_pairs
        self.max_pending_tokens = max_pending_tokens
        self.max_wait = float(max_wait)
        self._cond = threading.Condition()
        self._intake: list[PendingRequest] = []
        self._pending_pairs = 0
        self._pending_tokens = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._encode_pool: ThreadPoolExecutor | None = None
        self._listeners: list[EngineListener] = []
        self._closed = False
        self._prefixes = self._pipeline.new_prefix_cache(_PREFIX_CACHE_SIZE)
        self._vtime = 0.0  # the virtual start time of the request served last
        # What the worker has done, for monitoring and tests.
        self.batches_run = 0
        """Forward passes run so far."""
        self.pairs_run = 0
        """Pairs scored so far."""
        self.tokens_run = 0
        """Input tokens of the pairs scored so far (template included)."""
        self.pairs_dropped = 0
        """Pairs of cancelled or expired requests that were dropped before running."""
        self._pairs_per_s = 0.0  # smoothed throughput, for the overload hint

    # -- what it is ------------------------------------------------------------------------------------------------
    @property
    def settings(self) -> BatchSettings:
        """The batching settings every forward pass of this engine runs with."""
        return self._pipeline.settings

    @property
    def pending_pairs(self) -> int:
        """Pairs accepted and not yet scored or dropped."""
        return self._pending_pairs

    @property
    def pending_tokens(self) -> int:
        """Input tokens of the pending pairs."""
        return self._pending_tokens

    @property
    def prefix_runs(self) -> int:
        """Query prefixes encoded so far (each runs once while pairs of its query are pending)."""
        return self._prefixes.runs

    def add_listener(self, listener: EngineListener) -> None:
        """Report batches, finished requests and refusals to ``listener`` from now on."""
        with self._cond:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: EngineListener) -> None:
        """Stop reporting to ``listener`` (no error if it was not registered)."""
        with self._cond:
            self._listeners = [x for x in self._listeners if x is not listener]

    # -- submitting work -------------------------------------------------------------------------------------------
    def prepare(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scorer: EncodesPairs | None = None,
        instruction: str | None = None,
        max_length: int | None = None,
        max_doc_tokens: int | None = None,
        long_documents: LongDocuments | None = None,
    ) -> PreparedRequest:
        """Tokenize checked (query, document) pairs in this thread.

        Args:
            pairs: (query, document) pairs of ``str`` (check them first: :mod:`~pixie_integrations.validation`).
            scorer: Whose encoder (``max_length``) and default instruction to use; default the engine's.
            instruction: Task instruction; ``None`` uses the scorer's.
            max_length: Most tokens of one whole input for this request (at most the scorer's); only document
                tokens are cut.
            max_doc_tokens: Cut each document to at most this many tokens (the template is never cut).
            long_documents: With ``strategy="chunk"``, each document runs as chunk inputs whose logits become its
                score when the request completes (:class:`~pixie_integrations.LongDocuments`); ``None``: truncate.

        Raises:
            ValueError: The encoder refuses the input (e.g. ``max_length`` too small for the query).
        """
        encoder = scorer.encoder if scorer is not None else self._encoder
        if instruction is None:
            instruction = scorer.instruction if scorer is not None else self._instruction
        pairs = list(pairs)
        if not pairs:
            return PreparedRequest((), instruction, 0, encoder.max_length)
        limit = encoder.max_length if max_length is None else min(max_length, encoder.max_length)
        if long_documents is not None and long_documents.chunked:
            chunked, plan, truncated = encoder.encode_chunked(
                pairs, instruction, long_documents, max_length=max_length, max_doc_tokens=max_doc_tokens
            )
            return PreparedRequest(tuple(chunked), instruction, truncated, limit, chunks=plan)
        encoded, truncated = encoder.encode(pairs, instruction, max_length=max_length, max_doc_tokens=max_doc_tokens)
        return PreparedRequest(tuple(encoded), instruction, truncated, limit)

    async def aprepare(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scorer: EncodesPairs | None = None,
        instruction: str | None = None,
        max_length: int | None = None,
        max_doc_tokens: int | None = None,
        long_documents: LongDocuments | None = None,
    ) -> PreparedRequest:
        """:meth:`prepare` in the engine's encoding pool: never on the event loop, never on the worker."""
        call = functools.partial(
            self.prepare,
            pairs,
            scorer=scorer,
            instruction=instruction,
            max_length=max_length,
            max_doc_tokens=max_doc_tokens,
            long_documents=long_documents,
        )
        return await asyncio.get_running_loop().run_in_executor(self._encoding_pool(), call)

    def submit_prepared(
        self, prepared: PreparedRequest, *, raw: bool = False, timeout: float | None = None, priority: int = 0
    ) -> Future[ScoringResult]:
        """Queue a prepared request; the future gives a :class:`ScoringResult`.

        Args:
            prepared: From :meth:`prepare` or :meth:`aprepare`.
            raw: Logits instead of probabilities.
            timeout: Seconds from now after which the remaining pairs are dropped and the future fails with
                :class:`ScoringTimeoutError`; ``None`` waits as long as it takes.
            priority: Lower runs first (vLLM's meaning); the age bound ``max_wait`` keeps higher ones from starving.

        Raises:
            EngineOverloadedError: The pool is full (pairs or tokens).

        Cancelling the future before it is done drops the pairs that have not run yet.
        """
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {priority!r}")
        now = time.monotonic()
        count = prepared.pairs
        job = PendingRequest(
            prepared=prepared,
            raw=raw,
            priority=priority,
            deadline=None if timeout is None else now + timeout,
            future=Future(),
            seq=next(self._seq),
            accepted=now,
            tokens=prepared.tokens,
            logits=torch.empty(count, dtype=torch.float32),
            done=[False] * count,
            left=count,
            progressed=now,
            tokens_left=prepared.tokens,
        )
        if not count:
            job.future.set_result(ScoringResult(scores=[], truncated=0, tokens=0))
            return job.future
        with self._cond:
            if self._closed:
                raise RuntimeError("this ScoringEngine is closed")
            self._admit(job)
            self._pending_pairs += count
            self._pending_tokens += job.tokens
            self._intake.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="pixie-scoring-engine", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future

    def submit(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scorer: EncodesPairs | None = None,
        instruction: str | None = None,
        raw: bool = False,
        timeout: float | None = None,
        max_length: int | None = None,
        max_doc_tokens: int | None = None,
        priority: int = 0,
        long_documents: LongDocuments | None = None,
    ) -> Future[ScoringResult]:
        """:meth:`prepare` in this thread, then :meth:`submit_prepared`. A request the encoder refuses gives a
        future that fails with that error (so it fails alone, as when queued)."""
        try:
            prepared = self.prepare(
                pairs,
                scorer=scorer,
                instruction=instruction,
                max_length=max_length,
                max_doc_tokens=max_doc_tokens,
                long_documents=long_documents,
            )
        except ValueError as exc:
            failed: Future[ScoringResult] = Future()
            failed.set_exception(exc)
            return failed
        return self.submit_prepared(prepared, raw=raw, timeout=timeout, priority=priority)

    async def ascore_prepared(
        self, prepared: PreparedRequest, *, raw: bool = False, timeout: float | None = None, priority: int = 0
    ) -> ScoringResult:
        """:meth:`submit_prepared` and await the result; cancelling the awaiting task drops the pairs not yet run."""
        future = self.submit_prepared(prepared, raw=raw, timeout=timeout, priority=priority)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def ascore(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scorer: EncodesPairs | None = None,
        instruction: str | None = None,
        raw: bool = False,
        timeout: float | None = None,
        max_length: int | None = None,
        max_doc_tokens: int | None = None,
        priority: int = 0,
        long_documents: LongDocuments | None = None,
    ) -> ScoringResult:
        """:meth:`aprepare` (off the event loop) then :meth:`ascore_prepared`."""
        prepared = await self.aprepare(
            pairs,
            scorer=scorer,
            instruction=instruction,
            max_length=max_length,
            max_doc_tokens=max_doc_tokens,
            long_documents=long_documents,
        )
        return await self.ascore_prepared(prepared, raw=raw, timeout=timeout, priority=priority)

    def close(self) -> None:
        """Refuse new work, fail what still waits, and let the worker end."""
        with self._cond:
            self._closed = True
            pool, self._encode_pool = self._encode_pool, None
            self._cond.notify()
        if pool is not None:
            pool.shutdown(wait=False)

    def _encoding_pool(self) -> ThreadPoolExecutor:
        with self._cond:
            if self._encode_pool is None:
                self._encode_pool = ThreadPoolExecutor(_ENCODE_THREADS, thread_name_prefix="pixie-encode")
            return self._encode_pool

    def _admit(self, job: PendingRequest) -> None:
        """Refuse ``job`` if the pool is full (called holding the lock). A job alone in the pool always fits."""
        if not self._pending_pairs:
            return
        reason = None
        if self._pending_pairs + len(job.done) > self.max_pending_pairs:
            reason, what = "pending_pairs", f"{self._pending_pairs} pairs waiting, at most {self.max_pending_pairs}"
        elif self.max_pending_tokens is not None and self._pending_tokens + job.tokens > self.max_pending_tokens:
            reason = "pending_tokens"
            what = f"{self._pending_tokens} tokens waiting, at most {self.max_pending_tokens}"
        if reason is None:
            return
        rate = self._pairs_per_s or 1.0
        retry_after = max(1.0, min(60.0, self._pending_pairs / rate))
        for listener in self._listeners:
            _tell(listener.refused, reason=reason)
        raise EngineOverloadedError(
            f"the scoring queue is full ({what}); retry in about {retry_after:.0f} s",
            retry_after=retry_after,
            reason=reason,
        )

    # -- the worker ------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        pool: list[PendingRequest] = []
        while True:
            with self._cond:
                while not self._intake and not pool and not self._closed:
                    if not self._cond.wait(timeout=_IDLE_EXIT_S) and not self._intake:
                        self._thread = None  # a submit from now on starts a new worker
                        self._prefixes.retain(())
                        return
                if self._closed:
                    jobs, self._intake = pool + self._intake, []
                    self._thread = None
                    for job in jobs:
                        self._end(job, RuntimeError("the ScoringEngine was closed"), "error")
                    return
                arrived, self._intake = self._intake, []
            for job in arrived:
                job.vstart = self._vtime  # a new request starts at the current virtual time
            pool = [job for job in pool + arrived if not self._drop_if_gone(job)]
            if not pool:
                self._prefixes.retain(())
                continue
            self._run_next_batch(serving_order(pool, max_wait=self.max_wait))
            pool = [job for job in pool if job.left]

    def _run_next_batch(self, order: list[PendingRequest]) -> None:
        """Plan batches over the pending pairs (in serving order) and run the one holding the head's next pair."""
        owners: list[tuple[PendingRequest, int]] = []
        encoded: list[EncodedPair] = []
        for job in order:  # the first requests' pending pairs, up to the planning window
            for i in job.pending():
                owners.append((job, i))
                encoded.append(job.prepared.encoded[i])
            if len(encoded) >= _PLAN_WINDOW_PAIRS:
                break
        # Keep the prefix states that pairs in the window still need; the rest are freed.
        self._prefixes.retain({pair.prefix for pair in encoded})
        plan = self._pipeline.plan(encoded)
        # Owners are in serving order, so index 0 is the head request's next pending pair.
        batch, shared = next((b, s) for b, s in plan if 0 in b)
        pairs = [encoded[i] for i in batch]
        jobs = list({id(owners[i][0]): owners[i][0] for i in batch}.values())
        start = time.monotonic()
        for job in jobs:
            if job.started is None:
                job.started = start
            job.batches += 1
            job.shared_prefix_batches += shared
        self._vtime = order[0].vstart
        try:
            logits = self._pipeline.run_batch(pairs, shared, self._prefixes)
        except Exception as exc:  # a failing forward fails the requests in it, not the worker
            logger.exception("A scoring batch of %d pairs failed", len(pairs))
            for job in jobs:
                self._release(job.left, job.tokens_left)
                job.left = 0
                self._end(job, exc, "error")
            return
        end = time.monotonic()
        tokens = sum(len(pair) for pair in pairs)
        self.batches_run += 1
        self.pairs_run += len(batch)
        self.tokens_run += tokens
        rate = len(batch) / max(end - start, 1e-6)
        self._pairs_per_s = rate if not self._pairs_per_s else 0.8 * self._pairs_per_s + 0.2 * rate
        for listener in self._listeners:
            _tell(listener.batch_done, pairs=len(batch), tokens=tokens, seconds=end - start)
        for row, i in enumerate(batch):
            job, j = owners[i]
            job.logits[j] = logits[row]
            job.done[j] = True
            job.left -= 1
            size = len(pairs[row])
            job.tokens_left -= size
            job.vstart += size
            job.progressed = end
        self._release(len(batch), tokens)
        for job in jobs:
            if not job.left:
                self._complete(job)

    def _drop_if_gone(self, job: PendingRequest) -> bool:
        if not job.dropped():
            return False
        self.pairs_dropped += job.left
        self._release(job.left, job.tokens_left)
        job.left = 0
        if job.future.cancelled():
            self._report(job, "cancelled")
        else:
            self._end(job, ScoringTimeoutError("the request's deadline passed before it was scored"), "timeout")
        return True

    def _release(self, pairs: int, tokens: int) -> None:
        with self._cond:
            self._pending_pairs -= pairs
            self._pending_tokens -= tokens

    def _complete(self, job: PendingRequest) -> None:
        prepared = job.prepared
        log_truncated(prepared.truncated, prepared.pairs, prepared.max_length)
        logits, chunks = job.logits, None
        if prepared.chunks is not None:
            logits, chunks = prepared.chunks.aggregate(logits)
            log_dropped_chunks(prepared.chunks)
        scores = scores_from_logits(logits, raw=job.raw)
        result = ScoringResult(
            scores=scores,
            truncated=prepared.truncated,
            tokens=job.tokens,
            batches=job.batches,
            shared_prefix_batches=job.shared_prefix_batches,
            queued_s=(job.started if job.started is not None else job.accepted) - job.accepted,
            chunks=chunks,
        )
        self._end(job, result, "ok")

    def _end(self, job: PendingRequest, outcome: ScoringResult | BaseException, kind: str) -> None:
        self._report(job, kind)
        if not job.future.set_running_or_notify_cancel():
            return  # cancelled by its caller meanwhile
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def _report(self, job: PendingRequest, outcome: str) -> None:
        if not self._listeners:
            return
        now = time.monotonic()
        started = job.started if job.started is not None else now
        for listener in self._listeners:
            _tell(
                listener.request_done,
                outcome=outcome,
                pairs=job.prepared.pairs,
                tokens=job.tokens,
                truncated=job.prepared.truncated,
                queued_s=started - job.accepted,
                model_s=now - started,
            )


def _tell(method: Any, **values: Any) -> None:
    """Call a listener; a listener's failure is logged, never the engine's."""
    try:
        method(**values)
    except Exception:
        logger.exception("An engine listener failed")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


_engines_lock = threading.Lock()


def get_engine(source: Any) -> ScoringEngine:
    """The one engine of a model (``source``: a :class:`~pixie_integrations.PixieScorer` or a loaded model),
    created on first use with the model's batching settings (the defaults for its device, unless
    :func:`configure_engine` stated others).

    Every scorer sharing the model shares this engine and its worker, so at most one forward pass per model runs
    through engines at a time.
    """
    loaded = source if isinstance(source, LoadedModel) else source.loaded_model
    with _engines_lock:
        engine = loaded.engine
        if engine is None or engine._closed:
            engine = ScoringEngine(loaded)
            loaded.engine = engine
    return engine


def configure_engine(scorer: Any) -> ScoringEngine:
    """State once that the engine of ``scorer``'s model runs with ``scorer``'s batching settings (its token budget,
    batch size, prefix reuse, packing, compile) instead of the device's defaults; returns that engine.

    The server does this for the scorer it serves. An engine that already runs with these settings is kept; an
    idle one with other settings is replaced (its counters and listeners start again); a busy one is a
    ``RuntimeError``.
    """
    loaded = scorer.loaded_model
    with _engines_lock:
        engine = loaded.engine
        if engine is not None and not engine._closed:
            if engine.settings == scorer.settings:
                return engine
            if engine.pending_pairs:
                raise RuntimeError("the model's engine is busy: configure it before it takes work")
            engine.close()
        engine = ScoringEngine(scorer)
        loaded.engine = engine
    return engine
