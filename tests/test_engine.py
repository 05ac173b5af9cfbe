"""The batching engine: exact scores whoever calls, shared batches, cancellation, bounds, deadlines, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixie_integrations import PixieScorer
from pixie_integrations import engine as engine_module
from pixie_integrations.engine import EngineOverloadedError, ScoringEngine, ScoringTimeoutError, get_engine
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

DOCS = [*SAMPLE_DOCUMENTS, "", "짧은 문서"]


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


def test_a_cancelled_request_never_runs(engine: ScoringEngine) -> None:
    gate = threading.Event()
    original = engine._encode

    def slow_encode(job: object) -> bool:  # hold the worker on the first job so the second one waits
        gate.wait(10)
        return original(job)  # type: ignore[arg-type]

    engine._encode = slow_encode  # type: ignore[method-assign]
    first = engine.submit([(SAMPLE_QUERIES[0], d) for d in DOCS])
    second = engine.submit([(SAMPLE_QUERIES[1], d) for d in DOCS])
    assert second.cancel()
    gate.set()
    assert len(first.result(timeout=60).scores) == len(DOCS)
    deadline = time.monotonic() + 10
    while engine.pending_pairs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.pending_pairs == 0 and engine.pairs_dropped == len(DOCS) and engine.pairs_run == len(DOCS)


def test_cancelling_the_awaiting_task_drops_the_pairs(tiny_scorer: PixieScorer) -> None:
    engine = ScoringEngine(tiny_scorer, max_pending_pairs=10_000)
    many = [(SAMPLE_QUERIES[i % 5], f"{d} {i}") for i, d in enumerate(DOCS * 60)]

    async def main() -> None:
        task = asyncio.ensure_future(engine.ascore(many))
        await asyncio.sleep(0.05)
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
    gate = threading.Event()
    original = engine._encode
    engine._encode = lambda job: gate.wait(10) and original(job)  # type: ignore[method-assign]
    first = engine.submit([("q", d) for d in DOCS] * 2)
    with pytest.raises(EngineOverloadedError, match="queue is full") as info:
        engine.submit([("q", d) for d in DOCS])
    assert info.value.retry_after >= 1
    assert engine.submit([("q", "one")]) is not None  # what still fits is taken
    gate.set()
    assert len(first.result(timeout=60).scores) == 2 * len(DOCS)
    # A request larger than the whole pool still runs when nothing else waits: no request is too big to ever run.
    assert len(
        ScoringEngine(tiny_scorer, max_pending_pairs=2).submit([("q", d) for d in DOCS]).result(60).scores
    ) == len(DOCS)


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
