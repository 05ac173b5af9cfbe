"""Load and fault tests of ``pixie-rerank serve`` on loopback, bounded in count and time.

The server runs its real app under uvicorn in a thread; clients are real HTTP clients (httpx, raw sockets). The
model is a small random PIXIE-shaped checkpoint, big enough that forward passes, not HTTP, dominate.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")

import httpx

from pixie_integrations import PixieScorer
from pixie_integrations.serving import ServerLimits, create_app, serve_in_thread
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES, build_tiny_reranker

pytestmark = pytest.mark.slow

QUERY = SAMPLE_QUERIES[0]
# 64 distinct documents of similar length (~40-60 tokens each with the tiny tokenizer).
# Width 384 and 4 layers: enough compute per pair that forward passes, not HTTP, dominate (as with the real model).
DOCS = [f"{SAMPLE_DOCUMENTS[i % len(SAMPLE_DOCUMENTS)]} 문서 번호 {i} {'위성 영상 분석 ' * (i % 3)}" for i in range(64)]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> PixieScorer:
    path = build_tiny_reranker(tmp_path_factory.mktemp("load-model"), seed=5, num_layers=4, hidden_size=384)
    return PixieScorer(str(path), device="cpu", dtype="float32")


@contextmanager
def serving(scorer: PixieScorer, **limits: float) -> Iterator[str]:
    # The CPU token defaults are sized for the real model on 2 cores; this small model is far faster, and these
    # tests send requests past them on purpose (many seconds of work to drop, time out or overload).
    limits = {"max_request_tokens": 1 << 20, "max_pending_tokens": 1 << 22, **limits}
    with serve_in_thread(create_app(scorer, limits=ServerLimits(**limits))) as url:  # type: ignore[arg-type]
        yield url


@contextmanager
def forwards_in_flight(scorer: PixieScorer) -> Iterator[list[int]]:
    """Counts forward passes of the model running at once (real hooks on the real module); yields [max seen]."""
    backbone = getattr(scorer.model, scorer.model.base_model_prefix)
    lock = threading.Lock()
    state = {"now": 0}
    peak = [0]

    def enter(*_: object) -> None:
        with lock:
            state["now"] += 1
            peak[0] = max(peak[0], state["now"])

    def leave(*_: object) -> None:
        with lock:
            state["now"] -= 1

    handles = [backbone.register_forward_pre_hook(enter), backbone.register_forward_hook(leave)]
    try:
        yield peak
    finally:
        for handle in handles:
            handle.remove()


def rerank_body(documents: list[str], query: str = QUERY, **extra: object) -> dict[str, object]:
    return {"query": query, "documents": documents, **extra}


def scores_by_index(body: dict) -> list[float]:
    by_index = {r["index"]: r["relevance_score"] for r in body["results"]}
    return [by_index[i] for i in range(len(by_index))]


def test_concurrent_mixed_requests_get_the_in_process_scores(scorer: PixieScorer) -> None:
    requests = []
    for i in range(24):
        size = [1, 3, 17, 40][i % 4]
        docs = DOCS[i : i + size]
        query = SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)]
        instruction = "Given a question about satellites, find passages that answer it" if i % 5 == 0 else None
        requests.append((query, docs, instruction, i % 3 == 0))
    expected = [scorer.score(q, d, instruction=ins, raw=raw) for q, d, ins, raw in requests]

    async def send(client: httpx.AsyncClient, query: str, docs: list[str], instruction: str | None, raw: bool):
        if raw:
            body = {"queries": query, "documents": docs, "instruction": instruction, "raw": True}
            return (await client.post("/score", json=body)).json()["scores"]
        response = await client.post("/rerank", json=rerank_body(docs, query, instruction=instruction))
        return scores_by_index(response.json())

    async def main(url: str) -> list[list[float]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(send(client, *r) for r in requests))

    with serving(scorer) as url, forwards_in_flight(scorer) as peak:
        got = asyncio.run(main(url))
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-5)  # the project's float32 parity bar, logits included
    assert peak[0] == 1  # the engine's one worker: never two forward passes of the model at once


class PassRecorder:
    """An engine listener: the size of every forward pass (a structural record, not a timing)."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def batch_done(self, *, pairs: int, tokens: int, seconds: float) -> None:
        self.passes.append(pairs)

    def request_done(self, **_: object) -> None:
        pass

    def refused(self, **_: object) -> None:
        pass


def test_concurrent_one_document_requests_are_batched_together(scorer: PixieScorer) -> None:
    """64 one-document requests over HTTP share forward passes as one 64-document request does. Their pairs/s ratio
    is a benchmark figure (benchmarks/serve_load.py --scenario concurrency), not asserted here: what is checked
    below holds on any machine, however busy."""
    engine = scorer.engine
    recorder = PassRecorder()
    backbone = getattr(scorer.model, scorer.model.base_model_prefix)
    gate = threading.Event()

    def hold(*_: object) -> None:  # the worker's next forward pass waits until every request is queued
        gate.wait(60)

    async def main(url: str) -> tuple[list[float], list[float]]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            one = scores_by_index((await client.post("/rerank", json=rerank_body(DOCS))).json())
            handle = backbone.register_forward_pre_hook(hold)
            try:
                blocker = asyncio.ensure_future(client.post("/rerank", json=rerank_body(DOCS[:1], SAMPLE_QUERIES[3])))
                requests = asyncio.gather(*(client.post("/rerank", json=rerank_body([d])) for d in DOCS))
                deadline = time.monotonic() + 60
                while engine.pending_pairs < 1 + len(DOCS) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                engine.add_listener(recorder)
                gate.set()
                responses = await requests
                await blocker
            finally:
                gate.set()
                handle.remove()
                engine.remove_listener(recorder)
            assert all(r.status_code == 200 for r in responses)
            return one, [r.json()["results"][0]["relevance_score"] for r in responses]

    with serving(scorer) as url, forwards_in_flight(scorer) as peak:
        one, many = asyncio.run(main(url))
    assert many == pytest.approx(one, abs=1e-5)  # the same scores either way
    # The held pass, then the 64 single pairs planned together: a few full passes, as for the 64-document request.
    assert sum(recorder.passes) == 1 + len(DOCS), recorder.passes
    assert len(recorder.passes) <= 1 + 8, recorder.passes
    assert peak[0] == 1


def test_health_answers_at_once_while_the_model_is_saturated(scorer: PixieScorer) -> None:
    latencies: list[float] = []

    def poll(url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set() and len(latencies) < 200:
                start = time.perf_counter()
                assert client.get("/health").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.01)

    async def saturate(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await asyncio.gather(*(client.post("/rerank", json=rerank_body(DOCS)) for _ in range(12)))

    with serving(scorer) as url:
        stop = threading.Event()
        poller = threading.Thread(target=poll, args=(url, stop))
        saturation = threading.Thread(target=asyncio.run, args=(saturate(url),))
        saturation.start()
        time.sleep(0.2)
        poller.start()
        saturation.join(timeout=120)
        stop.set()
        poller.join(timeout=30)
    assert len(latencies) >= 20, "the saturation ended before /health was measured"
    p99 = statistics.quantiles(latencies, n=100)[98]
    assert p99 < 0.1, f"/health p99 {p99 * 1000:.0f} ms while saturated"


def test_a_dropped_request_frees_the_worker(scorer: PixieScorer) -> None:
    engine = scorer.engine
    big = [d * 4 for d in DOCS] * 4  # 256 long documents: many seconds of work

    async def drop(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            request = asyncio.ensure_future(client.post("/rerank", json=rerank_body(big)))
            deadline = time.monotonic() + 10
            while engine.pending_pairs == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert engine.pending_pairs > 0
            request.cancel()  # the client hangs up: httpx closes the connection
            await asyncio.gather(request, return_exceptions=True)

    with serving(scorer) as url:
        run_before, dropped_before = engine.pairs_run, engine.pairs_dropped
        asyncio.run(drop(url))
        deadline = time.monotonic() + 10
        while engine.pending_pairs and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.pending_pairs == 0
        assert engine.pairs_dropped > dropped_before
        assert engine.pairs_run - run_before < len(big)  # most of the abandoned work never ran
        with httpx.Client(base_url=url, timeout=30) as client:  # and the worker serves the next request
            body = client.post("/rerank", json=rerank_body(DOCS[:5])).json()
    assert scores_by_index(body) == pytest.approx(scorer.score(QUERY, DOCS[:5]), abs=1e-5)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_an_oversized_body_is_refused_before_it_is_read(scorer: PixieScorer) -> None:
    with serving(scorer, max_body_bytes=1_000_000) as url:
        host, port = urlparse(url).hostname, urlparse(url).port
        rss_before = _rss_bytes()
        # Announced as 200 MB, and only the headers are sent: the 413 comes from Content-Length alone.
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 200000000\r\n\r\n{"
            )
            head = sock.recv(4096).decode("latin-1")
        assert head.startswith("HTTP/1.1 413"), head
        assert "--max-body-bytes" in head
        # Streamed without a length (chunked): cut off once past the limit, long before its 8 MB are sent.
        chunk = b"x" * 65536

        def body() -> Iterator[bytes]:
            yield b'{"query": "q", "documents": ["'
            for _ in range(128):
                yield chunk

        with httpx.Client(base_url=url, timeout=30) as client:
            try:
                response = client.post("/rerank", content=body(), headers={"content-type": "application/json"})
                assert response.status_code == 413
            except httpx.WriteError:
                pass  # the server answered 413 and closed while the client was still writing
            assert client.get("/health").status_code == 200
            small = client.post("/rerank", json=rerank_body(DOCS[:2]))
            assert small.status_code == 200
        assert _rss_bytes() - rss_before < 50 * 1024 * 1024


def test_overload_is_503_with_retry_after_and_accepted_requests_are_exact(scorer: PixieScorer) -> None:
    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/rerank", json=rerank_body(DOCS[:40])) for _ in range(12)))

    with serving(scorer, max_pending_pairs=80) as url:
        responses = asyncio.run(burst(url))
    statuses = [r.status_code for r in responses]
    assert 503 in statuses and 200 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "overloaded_error" and "queue is full" in refused.json()["detail"]
    expected = scorer.score(QUERY, DOCS[:40])
    for response in responses:
        if response.status_code == 200:
            assert scores_by_index(response.json()) == pytest.approx(expected, abs=1e-5)
    scorer.engine.max_pending_pairs = ServerLimits().max_pending_pairs


def test_a_request_past_its_deadline_is_504_and_dropped(scorer: PixieScorer) -> None:
    big = [d * 4 for d in DOCS] * 2
    with serving(scorer, request_timeout=0.05) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/rerank", json=rerank_body(big))
        assert response.status_code == 504 and "--request-timeout" in response.json()["detail"]
        deadline = time.monotonic() + 10
        while scorer.engine.pending_pairs and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scorer.engine.pending_pairs == 0
