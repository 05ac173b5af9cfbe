"""The batching engine: exact scores whoever calls, shared batches, cancellation, bounds, deadlines, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from pixie_integrations import PixieScorer
from pixie_integrations import engine as engine_module
from pixie_integrations.engine import (
    EngineOverloadedError,
    ScoringEngine,
    ScoringTimeoutError,
    configure_engine,
    get_engine,
)
from pixie_integrations.pipeline import BatchPipeline
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

DOCS = [*SAMPLE_DOCUMENTS, "", "짧은 문서"]


@contextmanager
def holding_the_worker(scorer: PixieScorer) -> Iterator[Callable[[], None]]:
    """Blocks the model's next forward pass (a real pre-hook on the real backbone) until ``release()`` is called,
    so that requests submitted meanwhile are all pending when the worker plans its next batch."""
    backbone = getattr(scorer.model, scorer.model.base_model_prefix)
    gate = threading.Event()
    held = threading.Event()

    def hold(*_: object) -> None:
        if not gate.is_set():
            held.set()
            gate.wait(30)

    handle = backbone.register_forward_pre_hook(hold)
    try:
        yield gate.set
    finally:
        gate.set()
        handle.remove()


class Recorder:
    """An engine listener that keeps what it is told."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.requests: list[dict[str, object]] = []
        self.refusals: list[str] = []

    def batch_done(self, *, pairs: int, tokens: int, seconds: float) -> None:
        self.batches.append((pairs, tokens))

    def request_done(self, **values: object) -> None:
        self.requests.append(values)

    def refused(self, *, reason: str) -> None:
        self.refusals.append(reason)


def passes_until_done(engine: ScoringEngine, future: Future) -> list[int]:
    """Records ``engine.batches_run`` when ``future`` completes (a structural clock: forward passes, not seconds)."""
    seen: list[int] = []
    future.add_done_callback(lambda _: seen.append(engine.batches_run))
    return seen


@pytest.fixture
def engine(tiny_scorer: PixieScorer) -> ScoringEngine:
    return ScoringEngine(tiny_scorer, max_pending_pairs=10_000)


def test_async_scores_equal_the_synchronous_ones(tiny_scorer: PixieScorer) -> None:
    jobs = [(SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)], DOCS[: 1 + i % len(DOCS)]) for i in range(20)]

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(tiny_scorer.ascore(q, d) for q, d in jobs))

    got = asyncio.run(main())
    for (query, docs), scores in zip(jobs, got, strict=True):
        assert scores == pytest.approx(tiny_scorer.score(query, docs), abs=1e-6)
        assert all(type(s) is float for s in scores)
    pairs = [(SAMPLE_QUERIES[i % 5], d) for i, d in enumerate(DOCS)]
    raw = asyncio.run(tiny_scorer.ascore_pairs(pairs, raw=True, instruction="Find passages about satellites"))
    assert raw == pytest.approx(
        tiny_scorer.score_pairs(pairs, raw=True, instruction="Find passages about satellites"), abs=1e-5
    )
    ranked = asyncio.run(tiny_scorer.arank(SAMPLE_QUERIES[0], DOCS, top_n=3))
    assert [(r.index, r.document) for r in ranked] == [
        (r.index, r.document) for r in tiny_scorer.rank(SAMPLE_QUERIES[0], DOCS, top_n=3)
    ]
    assert asyncio.run(tiny_scorer.ascore("q", [])) == []


def test_async_input_is_checked_like_the_sync_api(tiny_scorer: PixieScorer) -> None:
    with pytest.raises(TypeError, match="documents must be a sequence"):
        asyncio.run(tiny_scorer.ascore("q", "one document"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        asyncio.run(tiny_scorer.ascore("q", ["a", 3]))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="top_n"):
        asyncio.run(tiny_scorer.arank("q", ["a"], top_n=0))


def test_one_engine_per_loaded_model(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    other = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", max_length=100)
    assert other.engine is tiny_scorer.engine is get_engine(tiny_scorer)
    # Each request is encoded by the scorer it came from: max_length=100 cuts documents, the other does not.
    long_doc = " ".join(SAMPLE_DOCUMENTS)
    cut = asyncio.run(other.ascore(SAMPLE_QUERIES[0], [long_doc]))
    assert cut == pytest.approx(other.score(SAMPLE_QUERIES[0], [long_doc]), abs=1e-6)
    assert cut != pytest.approx(tiny_scorer.score(SAMPLE_QUERIES[0], [long_doc]), abs=1e-6)


def test_threads_and_tasks_share_batches(engine: ScoringEngine, tiny_scorer: PixieScorer) -> None:
    query = SAMPLE_QUERIES[1]
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(lambda d=d: engine.submit([(query, d)]).result(timeout=60)) for d in DOCS * 4]
        results = [f.result() for f in futures]
    expected = tiny_scorer.score(query, DOCS * 4)
    assert [r.scores[0] for r in results] == pytest.approx(expected, abs=1e-6)
    assert engine.pairs_run == len(DOCS) * 4
    assert engine.batches_run < len(DOCS) * 4  # the one-pair requests were merged
    assert engine.pending_pairs == 0


def test_result_reports_truncation_and_tokens(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer)
    long_doc = " ".join(SAMPLE_DOCUMENTS * 3)
    result = engine.submit([(SAMPLE_QUERIES[0], long_doc), (SAMPLE_QUERIES[0], "짧은 문서")], max_length=96).result(60)
    assert result.truncated == 1 and result.tokens <= 2 * 96
    short = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", max_length=96)
    assert result.scores == pytest.approx(short.score(SAMPLE_QUERIES[0], [long_doc, "짧은 문서"]), abs=1e-6)


def test_a_cancelled_request_never_runs(engine: ScoringEngine, tiny_scorer: PixieScorer) -> None:
    with holding_the_worker(tiny_scorer) as release:
        first = engine.submit([(SAMPLE_QUERIES[0], d) for d in DOCS])
        second = engine.submit([(SAMPLE_QUERIES[1], d) for d in DOCS])
        assert second.cancel()
        release()
        assert len(first.result(timeout=60).scores) == len(DOCS)
    deadline = time.monotonic() + 10
    while engine.pending_pairs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.pending_pairs == 0 and engine.pending_tokens == 0
    assert engine.pairs_dropped == len(DOCS) and engine.pairs_run == len(DOCS)


def test_cancelling_the_awaiting_task_drops_the_pairs(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer, max_pending_pairs=10_000)
    many = [(SAMPLE_QUERIES[i % 5], f"{d} {i}") for i, d in enumerate(DOCS * 60)]

    async def main() -> None:
        task = asyncio.ensure_future(engine.ascore(many))
        deadline = time.monotonic() + 30
        while engine.pending_pairs == 0 and time.monotonic() < deadline:  # tokenized and queued
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while engine.pending_pairs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.pending_pairs == 0 and engine.pairs_run + engine.pairs_dropped == len(many)
    assert engine.pairs_dropped > 0


def test_a_full_queue_refuses_new_work_at_once(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer, max_pending_pairs=2 * len(DOCS) + 3)
    with holding_the_worker(tiny_scorer) as release:
        first = engine.submit([("q", d) for d in DOCS] * 2)
        with pytest.raises(EngineOverloadedError, match="queue is full") as info:
            engine.submit([("q", d) for d in DOCS])
        assert info.value.retry_after >= 1 and info.value.reason == "pending_pairs"
        assert engine.submit([("q", "one")]) is not None  # what still fits is taken
        release()
        assert len(first.result(timeout=60).scores) == 2 * len(DOCS)
    # A request larger than the whole pool still runs when nothing else waits: no request is too big to ever run.
    assert len(
        ScoringEngine(tiny_scorer, max_pending_pairs=2).submit([("q", d) for d in DOCS]).result(60).scores
    ) == len(DOCS)


def test_pending_tokens_are_bounded_and_refusals_reported(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer, max_pending_tokens=1000)
    listener = Recorder()
    engine.add_listener(listener)
    first_request = engine.prepare([(SAMPLE_QUERIES[0], d) for d in SAMPLE_DOCUMENTS])
    assert 500 < first_request.tokens <= 1000 and first_request.pair_tokens[0] == len(first_request.encoded[0])
    with holding_the_worker(tiny_scorer) as release:
        first = engine.submit_prepared(first_request)
        assert engine.pending_tokens == first_request.tokens and engine.pending_pairs == len(SAMPLE_DOCUMENTS)
        with pytest.raises(EngineOverloadedError, match="tokens waiting") as info:
            engine.submit_prepared(first_request)
        assert info.value.reason == "pending_tokens"
        release()
        assert len(first.result(timeout=60).scores) == len(SAMPLE_DOCUMENTS)
    assert listener.refusals == ["pending_tokens"]
    assert engine.pending_tokens == 0


def test_a_deadline_drops_the_remaining_pairs(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer)
    many = [(SAMPLE_QUERIES[i % 5], f"{d} {i}") for i, d in enumerate(DOCS * 60)]
    future = engine.submit(many, timeout=0.001)
    with pytest.raises(ScoringTimeoutError):
        future.result(timeout=60)
    assert engine.pairs_run < len(many)


def test_a_bad_request_fails_alone(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer)
    too_short = engine.submit([(SAMPLE_QUERIES[0] * 20, "doc")], max_length=8)
    fine = engine.submit([(SAMPLE_QUERIES[0], "doc")])
    with pytest.raises(ValueError, match="max_length=8 cannot hold"):
        too_short.result(timeout=60)
    assert fine.result(timeout=60).scores == pytest.approx(tiny_scorer.score(SAMPLE_QUERIES[0], ["doc"]), abs=1e-6)
    assert engine.pending_pairs == 0


def test_the_worker_ends_when_idle_and_restarts(tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "_IDLE_EXIT_S", 0.05)
    engine = ScoringEngine(tiny_scorer)
    assert engine.submit([("q", "d")]).result(60).scores
    deadline = time.monotonic() + 5
    while engine._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine._thread is None  # an idle engine holds no thread
    assert engine.submit([("q", "d")]).result(60).scores  # and the next request starts one
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([("q", "d")])


def test_engine_arguments_are_checked(tiny_scorer: PixieScorer) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_pending_pairs"):
            ScoringEngine(tiny_scorer, max_pending_pairs=bad)  # type: ignore[arg-type]


# -- scheduling -------------------------------------------------------------------------------------------------------
LONG = [(SAMPLE_QUERIES[0], f"{d} {i} " * 3) for i, d in enumerate(SAMPLE_DOCUMENTS * 8)]


def small_budget_engine(scorer: PixieScorer, **options: object) -> ScoringEngine:
    """An engine whose batches hold few pairs, so a long request takes many forward passes."""
    pipeline = BatchPipeline.build(scorer.loaded_model, token_budget=160)
    return ScoringEngine(scorer, pipeline=pipeline, **options)  # type: ignore[arg-type]


def test_a_short_request_behind_a_long_one_waits_one_batch(tiny_scorer: PixieScorer) -> None:
    engine = small_budget_engine(tiny_scorer)
    with holding_the_worker(tiny_scorer) as release:
        long = engine.submit(LONG)
        while engine.batches_run == 0 and not long.done():  # the long request's first pass is held
            if engine.pending_pairs == len(LONG):
                break
            time.sleep(0.001)
        time.sleep(0.05)
        short = engine.submit([(SAMPLE_QUERIES[1], "짧은 문서")])
        short_done, long_done = passes_until_done(engine, short), passes_until_done(engine, long)
        release()
        assert short.result(60).scores == pytest.approx(tiny_scorer.score(SAMPLE_QUERIES[1], ["짧은 문서"]), abs=1e-6)
        assert long.result(60).scores == pytest.approx(tiny_scorer.score_pairs(LONG), abs=1e-6)
    assert long_done[0] >= 6  # the long request needed many passes...
    assert short_done[0] <= 2  # ...and the short one ran in the pass right after the one in flight


def test_long_requests_take_turns(tiny_scorer: PixieScorer) -> None:
    engine = small_budget_engine(tiny_scorer)
    other = [(SAMPLE_QUERIES[2], d) for _, d in LONG]
    with holding_the_worker(tiny_scorer) as release:
        first = engine.submit(LONG)
        time.sleep(0.05)
        second = engine.submit(other)
        first_done, second_done = passes_until_done(engine, first), passes_until_done(engine, second)
        release()
        first.result(60), second.result(60)
    # Fair shares: the later request does not wait for the whole earlier one, and both end near the end.
    assert abs(first_done[0] - second_done[0]) <= 3, (first_done, second_done)


def test_lower_priority_values_run_first(tiny_scorer: PixieScorer) -> None:
    engine = small_budget_engine(tiny_scorer)
    with holding_the_worker(tiny_scorer) as release:
        background = engine.submit(LONG)
        time.sleep(0.05)
        late = engine.submit([(SAMPLE_QUERIES[3], d) for d in SAMPLE_DOCUMENTS[:2]], priority=5)
        urgent = engine.submit([(SAMPLE_QUERIES[4], d) for d in SAMPLE_DOCUMENTS[:2]], priority=-100)
        done = {name: passes_until_done(engine, f) for name, f in (("late", late), ("urgent", urgent))}
        background_done = passes_until_done(engine, background)
        release()
        for future in (background, late, urgent):
            future.result(60)
    assert done["urgent"][0] <= 2 < done["late"][0]
    assert done["late"][0] > background_done[0]  # priority 5 waits behind the priority-0 backlog
    with pytest.raises(TypeError, match="priority"):
        engine.submit([("q", "d")], priority=1.5)  # type: ignore[arg-type]


def test_the_age_bound_serves_a_starved_request_first(tiny_scorer: PixieScorer) -> None:
    engine = small_budget_engine(tiny_scorer, max_wait=0.05)
    with holding_the_worker(tiny_scorer) as release:
        background = engine.submit(LONG)
        time.sleep(0.02)
        patient = engine.submit([(SAMPLE_QUERIES[3], d) for d in SAMPLE_DOCUMENTS[:2]], priority=50)
        time.sleep(0.2)  # past max_wait: the priority-50 request has starved long enough
        eager = engine.submit([(SAMPLE_QUERIES[4], d) for d in SAMPLE_DOCUMENTS[:2]], priority=0)
        patient_done, eager_done = passes_until_done(engine, patient), passes_until_done(engine, eager)
        release()
        for future in (background, patient, eager):
            future.result(60)
    assert patient_done[0] < eager_done[0]


def test_a_prefix_runs_once_while_its_pairs_are_pending(tiny_scorer: PixieScorer) -> None:
    engine = small_budget_engine(tiny_scorer)
    assert engine.settings.reuse_prefix and not tiny_scorer.pipeline.runner.prefix_in_batch
    requests = [[(SAMPLE_QUERIES[q], f"{d} {q} {k}") for d in SAMPLE_DOCUMENTS * 2] for q in range(3) for k in (0, 1)]
    with holding_the_worker(tiny_scorer) as release:
        futures = [engine.submit(pairs) for pairs in requests]
        release()
        results = [f.result(60) for f in futures]
    for pairs, result in zip(requests, results, strict=True):
        assert result.scores == pytest.approx(tiny_scorer.score_pairs(pairs), abs=1e-6)
    assert engine.batches_run > 12  # the six requests were interleaved over many passes...
    assert engine.prefix_runs == 3  # ...and each query's prefix still ran once


def test_async_requests_are_tokenized_off_the_loop_and_the_worker(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer)
    tokenizer = tiny_scorer.tokenizer
    threads: list[str] = []
    original = type(tokenizer).__call__

    def spy(self: object, *args: object, **kwargs: object) -> object:  # the real tokenizer, with who called it
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    async def main() -> list[float]:
        loop_thread = threading.current_thread().name
        result = await engine.ascore([(SAMPLE_QUERIES[0], d) for d in DOCS])
        assert loop_thread not in threads
        return result.scores

    type(tokenizer).__call__ = spy  # type: ignore[method-assign]
    try:
        scores = asyncio.run(main())
    finally:
        type(tokenizer).__call__ = original  # type: ignore[method-assign]
    assert threads and all(name.startswith("pixie-encode") for name in threads), threads
    assert scores == pytest.approx(tiny_scorer.score(SAMPLE_QUERIES[0], DOCS), abs=1e-6)


def test_the_engine_settings_are_the_models_not_the_first_callers(tiny_reranker: Path) -> None:
    small = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", token_budget=96, batch_size=2)
    default = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")
    assert small.loaded_model is default.loaded_model
    engine = small.engine  # the smaller scorer asks first
    assert engine.settings == default.settings != small.settings
    assert asyncio.run(small.ascore(SAMPLE_QUERIES[0], DOCS)) == pytest.approx(
        small.score(SAMPLE_QUERIES[0], DOCS), abs=1e-6
    )
    stated = configure_engine(small)
    assert stated.settings == small.settings and default.engine is stated
    assert configure_engine(small) is stated  # stating the same settings again keeps it
    configure_engine(default)


def test_listeners_hear_every_batch_and_request(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer)
    listener = Recorder()
    engine.add_listener(listener)
    pairs = [(SAMPLE_QUERIES[i % 3], d) for i, d in enumerate(DOCS * 3)]
    result = engine.submit(pairs).result(60)
    assert len(listener.batches) == engine.batches_run
    assert sum(p for p, _ in listener.batches) == len(pairs) == engine.pairs_run
    assert sum(t for _, t in listener.batches) == result.tokens == engine.tokens_run
    (request,) = listener.requests
    assert request["outcome"] == "ok" and request["pairs"] == len(pairs) and request["tokens"] == result.tokens
    assert request["queued_s"] >= 0 and request["model_s"] >= 0  # type: ignore[operator]
    engine.remove_listener(listener)
    engine.submit(pairs[:2]).result(60)
    assert len(listener.requests) == 1


def test_min_tokens_is_a_lower_bound_from_characters_alone(tiny_scorer: PixieScorer) -> None:
    encoder = tiny_scorer.encoder
    composing = "\u03b9\u0308\u0301\u0345" * 200  # four code points that NFC makes one character
    texts = [*SAMPLE_DOCUMENTS, " " * 500, "a" * 1000, "위성" * 300, "<|im_start|>" * 40, "1234567890" * 50, composing, ""]
    for text in texts:
        actual = len(tiny_scorer.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert encoder.min_tokens(text) <= actual, text[:20]
    assert encoder.min_tokens("a" * 100_000) >= 100_000 // 64  # a real bound for long texts, not 0
