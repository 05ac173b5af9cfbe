"""``GET /metrics``: the real server on loopback, scraped with httpx and read with prometheus-client's own parser.

Counts only, no timings: every number checked is a count of requests, passes, pairs or documents.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pixie_integrations import PixieScorer, __version__
from pixie_integrations.serving import ServerLimits, create_app, serve_in_thread
from pixie_integrations.serving.metrics import install_metrics
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

KEY = "metrics-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = SAMPLE_QUERIES[0]
DOCS = list(SAMPLE_DOCUMENTS[:4])

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def read(text: str) -> Samples:
    """Every sample of a scrape, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def scrape(http: httpx.Client, headers: dict[str, str] | None = AUTH) -> Samples:
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return read(response.text)


@pytest.fixture(scope="module")
def server(tiny_scorer: PixieScorer) -> Iterator[httpx.Client]:
    limits = ServerLimits(max_body_bytes=1_000_000)
    app = create_app(tiny_scorer, api_key=KEY, served_model_name="pixie-metrics", limits=limits)
    with serve_in_thread(app, start_timeout=20) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def test_counters_follow_the_requests_and_the_engine(server: httpx.Client, tiny_scorer: PixieScorer) -> None:
    engine = tiny_scorer.engine
    before, batches, pairs = scrape(server), engine.batches_run, engine.pairs_run
    n = 3
    for i in range(n):
        response = server.post("/rerank", json={"query": QUERY, "documents": DOCS[: i + 2]}, headers=AUTH)
        assert response.status_code == 200, response.text
    scored = sum(i + 2 for i in range(n))
    after = scrape(server)

    assert delta(before, after, "pixie_requests_total", route="/rerank", status="200") == n
    assert delta(before, after, "pixie_request_duration_seconds_count", route="/rerank") == n
    assert (
        delta(before, after, "pixie_requests_total", route="/metrics", status="200") == 1
    )  # the first scrape, counted once done
    assert engine.pairs_run - pairs == scored
    assert delta(before, after, "pixie_forward_passes_total") == engine.batches_run - batches > 0
    assert delta(before, after, "pixie_forward_pass_pairs_count") == engine.batches_run - batches
    assert delta(before, after, "pixie_forward_pass_pairs_sum") == scored
    assert delta(before, after, "pixie_forward_pass_tokens_sum") > 0
    assert delta(before, after, "pixie_engine_requests_total", outcome="ok") == n
    assert delta(before, after, "pixie_request_queue_seconds_count") == n
    assert delta(before, after, "pixie_request_model_seconds_count") == n
    assert value(after, "pixie_pending_pairs") == 0
    assert value(after, "pixie_pending_tokens") == 0
    assert value(after, "pixie_server_info", version=__version__, served_model_name="pixie-metrics") == 1


def test_truncated_documents_are_counted(server: httpx.Client) -> None:
    before = scrape(server)
    body = {"query": QUERY, "documents": [" ".join(DOCS) * 4, "short"], "truncate_prompt_tokens": 96}
    response = server.post("/rerank", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    truncated = response.json()["usage"]["truncated_documents"]
    assert truncated >= 1
    after = scrape(server)
    assert delta(before, after, "pixie_truncated_documents_total") == truncated


def test_unknown_paths_share_one_label(server: httpx.Client) -> None:
    before = scrape(server)
    for path in ("/nope", "/nope/123", "/v1/rerank/extra"):
        assert server.get(path, headers=AUTH).status_code == 404
    assert server.get("/rerank", headers=AUTH).status_code == 405  # a known route, the wrong method
    after = read(server.get("/metrics", headers=AUTH).text)
    assert delta(before, after, "pixie_requests_total", route="other", status="404") == 3
    assert value(after, "pixie_requests_total", route="/rerank", status="405") >= 1
    routes = {dict(labels).get("route") for name, labels in after if name == "pixie_requests_total"}
    assert not any(route and "nope" in route for route in routes)
    assert "/v1/rerank/extra" not in routes


def test_metrics_needs_the_key_and_refusals_are_counted(server: httpx.Client) -> None:
    before = scrape(server)
    assert server.get("/metrics").status_code == 401
    assert server.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    too_large = server.post("/v1/rerank", content=b"x" * 1_000_001, headers={**AUTH, "content-type": "x"})
    assert too_large.status_code == 413
    after = scrape(server)
    assert delta(before, after, "pixie_refused_requests_total", reason="unauthorized") == 2
    assert delta(before, after, "pixie_requests_total", route="/metrics", status="401") == 2
    assert delta(before, after, "pixie_refused_requests_total", reason="too_large") == 1
    # Refused on its Content-Length before routing, and still labelled by its route.
    assert value(after, "pixie_requests_total", route="/v1/rerank", status="413") >= 1


def test_engine_refusals_are_counted_by_reason(server: httpx.Client, tiny_scorer: PixieScorer) -> None:
    engine = tiny_scorer.engine
    backbone = getattr(tiny_scorer.model, tiny_scorer.model.base_model_prefix)
    gate = threading.Event()

    def hold(*_: object) -> None:  # holds the worker's next forward pass until the gate opens
        gate.wait(60)

    handle = backbone.register_forward_pre_hook(hold)
    bound = engine.max_pending_pairs
    before = scrape(server)
    try:
        engine.max_pending_pairs = 2
        held = engine.submit([(QUERY, d) for d in DOCS[:2]])  # two pairs pending until the gate opens
        response = server.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers=AUTH)
        assert response.status_code == 503, response.text
        during = scrape(server)
    finally:
        engine.max_pending_pairs = bound
        gate.set()
        handle.remove()
    held.result(timeout=60)
    assert value(during, "pixie_pending_pairs") == 2
    after = scrape(server)
    assert delta(before, after, "pixie_refused_requests_total", reason="pending_pairs") == 1
    assert delta(before, after, "pixie_requests_total", route="/rerank", status="503") == 1
    assert value(after, "pixie_pending_pairs") == 0


def test_the_server_reports_its_own_refusals(tiny_scorer: PixieScorer) -> None:
    app = create_app(tiny_scorer)
    app.state.metrics.refused("too_many_documents")
    with TestClient(app) as client:
        samples = read(client.get("/metrics").text)
    assert value(samples, "pixie_refused_requests_total", reason="too_many_documents") == 1


def test_the_flag_opens_metrics_and_nothing_else(tiny_scorer: PixieScorer) -> None:
    app = create_app(tiny_scorer, api_key=KEY, metrics_without_key=True)
    with serve_in_thread(app, start_timeout=20) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/metrics").status_code == 200
        assert http.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 401
        assert http.get("/v1/models").status_code == 401
        assert http.get("/openapi.json").status_code == 401
        assert "/metrics" not in http.get("/openapi.json", headers=AUTH).json()["paths"]


def test_two_apps_in_one_process_do_not_collide(tiny_scorer: PixieScorer) -> None:
    first = create_app(tiny_scorer, served_model_name="first")
    second = create_app(tiny_scorer, served_model_name="second")
    with (
        serve_in_thread(first, start_timeout=20) as a,
        serve_in_thread(second, start_timeout=20) as b,
        httpx.Client(base_url=a, timeout=60) as one,
        httpx.Client(base_url=b, timeout=60) as two,
    ):
        for _ in range(2):
            assert one.post("/score", json={"queries": QUERY, "documents": DOCS}).status_code == 200
        assert two.post("/score", json={"queries": QUERY, "documents": DOCS}).status_code == 200
        first_samples, second_samples = scrape(one, None), scrape(two, None)
    assert value(first_samples, "pixie_requests_total", route="/score", status="200") == 2
    assert value(second_samples, "pixie_requests_total", route="/score", status="200") == 1
    assert value(first_samples, "pixie_server_info", version=__version__, served_model_name="first") == 1
    assert value(second_samples, "pixie_server_info", version=__version__, served_model_name="second") == 1
    # Both listen to the one engine of the shared model: each saw every pass since it was built.
    assert value(first_samples, "pixie_forward_pass_pairs_sum") == 3 * len(DOCS)
    assert value(second_samples, "pixie_forward_pass_pairs_sum") == 3 * len(DOCS)


def test_the_engine_listener_goes_with_the_app(tiny_scorer: PixieScorer) -> None:
    engine = tiny_scorer.engine
    app = create_app(tiny_scorer)
    metrics = app.state.metrics
    with TestClient(app) as client:  # runs the lifespan: its shutdown detaches the listener
        assert client.post("/score", json={"queries": QUERY, "documents": DOCS}).status_code == 200
    passes = value(read(metrics.scrape().decode()), "pixie_forward_passes_total")
    assert passes >= 1
    engine.submit([(QUERY, d) for d in DOCS]).result(timeout=60)
    assert value(read(metrics.scrape().decode()), "pixie_forward_passes_total") == passes

    # Without a shutdown (serve_in_thread runs no lifespan), the engine holds an app's metrics only weakly: once
    # the app is collected, so is its listener.
    bare = FastAPI()
    ref = weakref.ref(install_metrics(bare, engine, served_model_name="gone"))
    del bare
    gc.collect()
    assert ref() is None
    engine.submit([(QUERY, DOCS[0])]).result(timeout=60)


def test_cli_flag_reaches_serve(monkeypatch: pytest.MonkeyPatch, tiny_reranker: Path) -> None:
    from pixie_integrations import serving
    from pixie_integrations.cli import main

    calls: list[dict] = []
    monkeypatch.setattr(serving, "serve", lambda *a, **k: calls.append(k))
    assert main(["serve", "--model", str(tiny_reranker), "--metrics-without-key"]) == 0
    assert main(["serve", "--model", str(tiny_reranker)]) == 0
    assert [k["metrics_without_key"] for k in calls] == [True, False]
