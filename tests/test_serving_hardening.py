"""The server under traffic it should refuse or survive: token limits, priority, large renderings off the event loop,
clients that hang up, silent connections, wrong content types, and a ``serve`` that fails before it loads a model.

Real servers on loopback (``serve_in_thread``) and real clients (httpx, raw sockets). Nothing here asserts a time:
only status codes, messages, counts, which thread did what, and which log lines appeared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")

import httpx

from pixie_integrations import PixieScorer, __version__
from pixie_integrations.serving import ServerLimits, create_app, serve_in_thread
from pixie_integrations.serving.schemas import RerankRequest
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES, build_tiny_reranker

QUERY = SAMPLE_QUERIES[0]
DOCS = SAMPLE_DOCUMENTS[:4]
KEY = "s3cret-key"
WAIT_S = 20.0  # generous slack for anything that should happen "soon"; never asserted as a duration


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> PixieScorer:
    # Its own checkpoint, so its own engine: the limits set here never leak into other modules' servers.
    path = build_tiny_reranker(tmp_path_factory.mktemp("hardening-model"), seed=11)
    return PixieScorer(str(path), device="cpu", dtype="float32")


@contextmanager
def serving(scorer: PixieScorer, **kwargs: Any) -> Iterator[str]:
    limits = ServerLimits(**kwargs.pop("limits", {}))
    with serve_in_thread(create_app(scorer, limits=limits, **kwargs)) as url:
        yield url


@contextmanager
def held_forward(scorer: PixieScorer) -> Iterator[threading.Event]:
    """Holds every forward pass of the model until the yielded event is set (a real hook on the real module)."""
    release = threading.Event()
    backbone = getattr(scorer.model, scorer.model.base_model_prefix)
    handle = backbone.register_forward_pre_hook(lambda *_: release.wait(WAIT_S) and None)
    try:
        yield release
    finally:
        release.set()
        handle.remove()


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    assert parsed.hostname is not None and parsed.port is not None
    return parsed.hostname, parsed.port


# -- token limits ------------------------------------------------------------------------------------------------------
def test_a_document_whose_characters_imply_too_many_tokens_is_413_before_tokenizing(
    scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = scorer.engine.prepare([(QUERY, "short")], scorer=scorer).tokens + 8  # the template fits, and a bit more
    encoder = scorer.encoder
    calls: list[int] = []
    real_encode = encoder.encode
    monkeypatch.setattr(
        encoder, "encode", lambda pairs, *a, **k: calls.append(len(pairs)) or real_encode(pairs, *a, **k)
    )
    huge = "위성 데이터 " * 20_000  # 140,000 characters: far more tokens than that, whatever the tokenizer merges
    assert encoder.min_tokens(huge) > limit
    with serving(scorer, limits={"max_document_tokens": limit}) as url, httpx.Client(base_url=url, timeout=30) as client:
        runs_before = scorer.engine.pairs_run
        response = client.post("/rerank", json={"query": QUERY, "documents": ["short", huge]})
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert "documents[1]" in detail and "at least" in detail and "--max-document-tokens" in detail
        assert "max_document_tokens" in detail and f"most {limit} " in detail
        assert response.json()["error"]["type"] == "request_too_large"
        assert calls == []  # refused from its characters: never tokenized
        assert scorer.engine.pairs_run == runs_before and scorer.engine.pending_pairs == 0  # nor queued
        ok = client.post("/rerank", json={"query": QUERY, "documents": ["short"]})
        assert ok.status_code == 200 and calls == [1]


def test_exact_token_limits_after_tokenizing_are_413_naming_the_limit(scorer: PixieScorer) -> None:
    pair_tokens = scorer.engine.prepare([(QUERY, d) for d in DOCS], scorer=scorer).pair_tokens
    longest, total = max(pair_tokens), sum(pair_tokens)
    runs_before = scorer.engine.pairs_run
    with serving(scorer, limits={"max_document_tokens": longest - 1}) as url:
        response = httpx.post(f"{url}/rerank", json={"query": QUERY, "documents": DOCS}, timeout=30)
    assert response.status_code == 413
    detail = response.json()["detail"]
    index = pair_tokens.index(longest)
    assert f"documents[{index}] makes an input of {longest} tokens" in detail
    assert f"at most {longest - 1} per document" in detail and "--max-document-tokens" in detail
    with serving(scorer, limits={"max_request_tokens": total - 1}) as url:
        response = httpx.post(f"{url}/score", json={"queries": QUERY, "documents": DOCS}, timeout=30)
        assert response.status_code == 413
        detail = response.json()["detail"]
        assert f"the request has {total} tokens" in detail and f"at most {total - 1} per request" in detail
        assert "--max-request-tokens" in detail
        fits = httpx.post(f"{url}/score", json={"queries": QUERY, "documents": DOCS[:-1]}, timeout=30)
        assert fits.status_code == 200 and fits.json()["usage"]["prompt_tokens"] == sum(pair_tokens[:-1])
    assert scorer.engine.pairs_run - runs_before == len(DOCS) - 1  # the refused requests never reached the model


def test_a_full_engine_in_tokens_is_503_with_retry_after(scorer: PixieScorer) -> None:
    limits = {"max_pending_tokens": 200, "max_pending_pairs": 10_000}
    with serving(scorer, limits=limits) as url, held_forward(scorer) as release:
        engine = scorer.engine
        assert engine.max_pending_tokens == 200
        with httpx.Client(base_url=url, timeout=30) as client:
            first = threading.Thread(
                target=client.post, args=("/rerank",), kwargs={"json": {"query": QUERY, "documents": DOCS}}
            )
            first.start()
            assert wait_until(lambda: engine.pending_pairs > 0)
            refused = client.post("/rerank", json={"query": QUERY, "documents": DOCS})
            ready = client.get("/ready")
            release.set()
            first.join(WAIT_S)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "tokens waiting" in refused.json()["detail"] and refused.json()["error"]["type"] == "overloaded_error"
        assert ready.status_code in (200, 503) and "pending_tokens" in ready.json()


def test_priority_reaches_the_engine(scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(scorer) as url, httpx.Client(base_url=url, timeout=30) as client:
        engine = scorer.engine
        seen: list[int] = []
        real_submit = engine.submit_prepared

        def submit(prepared: Any, **kwargs: Any) -> Any:
            seen.append(kwargs["priority"])
            return real_submit(prepared, **kwargs)

        monkeypatch.setattr(engine, "submit_prepared", submit)
        assert client.post("/rerank", json={"query": QUERY, "documents": DOCS, "priority": -3}).status_code == 200
        assert client.post("/v1/score", json={"text_1": QUERY, "text_2": DOCS, "priority": 7}).status_code == 200
        assert client.post("/score", json={"queries": QUERY, "documents": DOCS}).status_code == 200
    assert seen == [-3, 7, 0]  # vLLM's meaning, lower first; absent: 0


# -- nothing heavy on the event loop -----------------------------------------------------------------------------------
def test_a_large_rank_fields_request_is_rendered_off_the_event_loop(
    scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: list[tuple[str, bool]] = []
    real_texts = RerankRequest.texts

    def texts(self: RerankRequest) -> list[str]:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        where.append((threading.current_thread().name, on_loop))
        return real_texts(self)

    monkeypatch.setattr(RerankRequest, "texts", texts)
    objects = [{"title": f"문서 {i}", "text": "위성 영상 분석 " * 400} for i in range(60)]  # ~0.5 MB of JSON
    small = [{"title": "t", "text": d} for d in DOCS]
    limits = {"max_documents": 100, "max_request_tokens": 1 << 20}  # ~80k tokens: past the CPU default on purpose
    with serving(scorer, limits=limits) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = {"query": QUERY, "documents": objects, "rank_fields": ["title", "text"], "top_n": 1}
        assert len(json.dumps(body).encode()) > 256 * 1024
        assert client.post("/rerank", json=body).status_code == 200
        small_body = {"query": QUERY, "documents": small, "rank_fields": ["title"]}
        assert client.post("/rerank", json=small_body).status_code == 200
    (large_thread, large_on_loop), (_, small_on_loop) = where
    assert not large_on_loop and large_thread != threading.main_thread().name
    assert small_on_loop  # a small one is rendered inline: a thread hop would cost more than it saves


# -- quiet failures ----------------------------------------------------------------------------------------------------
@pytest.fixture
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the server's and uvicorn's loggers (uvicorn's do not propagate to the root logger)."""
    caplog.set_level(logging.DEBUG)
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn_logger.removeHandler(caplog.handler)


def _hung_up_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "hung up" in r.getMessage()]


def test_a_client_that_hangs_up_mid_body_is_one_info_line(
    scorer: PixieScorer, server_logs: pytest.LogCaptureFixture
) -> None:
    with serving(scorer) as url:
        with socket.create_connection(address(url), timeout=10) as sock:
            sock.sendall(
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"query": "q", "documents": ["'
            )
        assert wait_until(lambda: bool(_hung_up_lines(server_logs)))
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    (line,) = _hung_up_lines(server_logs)
    assert line.levelno <= logging.INFO and "while sending its request" in line.getMessage()
    assert [r for r in server_logs.records if r.exc_info] == []  # no traceback at any level
    assert not [r for r in server_logs.records if r.levelno >= logging.WARNING], server_logs.text


def test_a_client_that_hangs_up_while_scored_is_one_info_line(
    scorer: PixieScorer, server_logs: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"query": QUERY, "documents": DOCS}).encode()
    with serving(scorer) as url, held_forward(scorer) as release:
        engine = scorer.engine
        dropped = engine.pairs_dropped
        with socket.create_connection(address(url), timeout=10) as sock:
            sock.sendall(
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert wait_until(lambda: engine.pending_pairs > 0)
        assert wait_until(lambda: bool(_hung_up_lines(server_logs)))
        release.set()
        assert wait_until(lambda: engine.pending_pairs == 0)
    (line,) = _hung_up_lines(server_logs)
    assert line.levelno <= logging.INFO and "while its request was scored" in line.getMessage()
    assert [r for r in server_logs.records if r.exc_info] == []
    assert engine.pairs_dropped >= dropped  # its pairs not yet run were dropped (the held one may have run)


def test_a_silent_connection_is_closed_after_the_header_timeout(scorer: PixieScorer) -> None:
    limits = {"header_timeout": 0.5, "body_timeout": 0.5}
    with serving(scorer, limits=limits) as url:
        with socket.create_connection(address(url), timeout=WAIT_S) as silent:
            assert silent.recv(1) == b""  # the server closed it: it sent nothing at all
        with socket.create_connection(address(url), timeout=WAIT_S) as partial:
            partial.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\n")  # headers that never end
            assert partial.recv(1) == b""
        with socket.create_connection(address(url), timeout=WAIT_S) as slow_body:
            slow_body.sendall(
                b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            answer = b""
            while chunk := slow_body.recv(4096):  # until the server closes it
                answer += chunk
        head, _, payload = answer.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 408") and "--body-timeout" in json.loads(payload)["detail"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the server itself is fine


# -- hardening ---------------------------------------------------------------------------------------------------------
def test_scoring_routes_take_json_only(scorer: PixieScorer) -> None:
    body = json.dumps({"query": QUERY, "documents": DOCS})
    runs_before = scorer.engine.pairs_run
    with serving(scorer) as url, httpx.Client(base_url=url, timeout=30) as client:
        for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
            for path in ("/rerank", "/score"):
                response = client.post(path, content=body, headers=headers)
                assert response.status_code == 415, (path, headers)
                assert "Content-Type: application/json" in response.json()["detail"]
        assert scorer.engine.pairs_run == runs_before  # a text/plain body from a web page is never scored
        with_charset = client.post("/rerank", content=body, headers={"content-type": "application/json; charset=utf-8"})
        assert with_charset.status_code == 200


def test_the_bearer_scheme_is_case_insensitive_and_ready_needs_no_key(scorer: PixieScorer) -> None:
    request = {"query": QUERY, "documents": DOCS[:1]}
    with serving(scorer, api_key=KEY) as url, httpx.Client(base_url=url, timeout=30) as client:
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = client.post("/rerank", json=request, headers={"Authorization": f"{scheme} {KEY}"})
            assert response.status_code == 200, scheme
        for header in (f"Basic {KEY}", "Bearer wrong", KEY, f"Bearer {KEY}x", ""):
            assert client.post("/rerank", json=request, headers={"Authorization": header}).status_code == 401
        assert client.get("/ready").status_code == 200  # a load balancer's probe has no key
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 401
    with serving(scorer, api_key=KEY, ready_requires_key=True) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/ready").status_code == 401
        assert client.get("/ready", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_every_response_names_the_server(scorer: PixieScorer) -> None:
    expected = f"pixie-integrations/{__version__}"
    with serving(scorer, api_key=KEY, limits={"max_body_bytes": 1000}) as url, httpx.Client(base_url=url) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        responses = [
            client.get("/health"),
            client.get("/v1/models", headers=auth),
            client.post("/rerank", json={"query": QUERY, "documents": DOCS[:1]}, headers=auth),
            client.post("/rerank", json={"query": QUERY, "documents": DOCS[:1]}),  # 401
            client.get("/nowhere", headers=auth),  # 404
            client.post("/rerank", json={"query": QUERY, "documents": ["x" * 2000]}, headers=auth),  # 413
            client.post("/rerank", content=b"{}", headers={**auth, "content-type": "text/plain"}),  # 415
            client.post("/rerank", json={"query": QUERY}, headers=auth),  # 422
        ]
        assert [r.status_code for r in responses] == [200, 200, 200, 401, 404, 413, 415, 422]
        assert all(r.headers.get("x-pixie-server") == expected for r in responses)
        assert {m["owned_by"] for m in responses[1].json()["data"]} == {"pixie-integrations"}


def test_serve_help_lists_every_route(scorer: PixieScorer) -> None:
    from fastapi.routing import APIRoute

    from pixie_integrations.cli import build_parser

    parser = build_parser()
    (serve,) = [a.choices["serve"] for a in parser._actions if getattr(a, "choices", None) and "serve" in a.choices]
    text = serve.format_help()
    paths = {route.path for route in create_app(scorer).routes if isinstance(route, APIRoute)}
    assert paths >= {"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/models", "/health", "/ready"}
    assert [p for p in paths if p not in text] == []
    for flag in ("--max-document-tokens", "--max-request-tokens", "--max-pending-tokens", "--header-timeout"):
        assert flag in text
    assert "--body-timeout" in text and "--ready-requires-key" in text


# -- serve fails before it loads ---------------------------------------------------------------------------------------
def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_serve_refuses_an_empty_served_name_and_a_busy_port_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixie_integrations.cli import main

    missing = str(tmp_path / "no-model-here")  # loading it would fail loudly ("does not exist")
    assert main(["serve", "--model", missing, "--served-model-name", "", "--port", "8765"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--served-model-name" in line and "Loading" not in line
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", missing, "--port", str(port)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"port {port}" in line and "already in use" in line and "--port" in line
    assert "does not exist" not in line  # the model was never loaded


def test_responses_have_exactly_the_documented_shapes(scorer: PixieScorer) -> None:
    from pixie_integrations.serving.schemas import PixieScoreResponse, RerankResponse, VllmScoreResponse

    with serving(scorer) as url, httpx.Client(base_url=url, timeout=30) as client:
        rerank = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True}).json()
        chunks = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 2}).json()
        vllm = client.post("/score", json={"text_1": QUERY, "text_2": DOCS}).json()
        pixie = client.post("/score", json={"queries": QUERY, "documents": DOCS}).json()
    for body in (rerank, chunks):
        assert RerankResponse.model_validate(body).model_dump(exclude_none=True) == body
    assert "pixie_chunk" in chunks["results"][0] and "document" not in chunks["results"][0]
    assert VllmScoreResponse.model_validate(vllm).model_dump() == vllm
    assert PixieScoreResponse.model_validate(pixie).model_dump(exclude_none=True) == pixie  # chunks: only chunked


def test_bound_sockets_are_tcp_so_every_event_loop_sets_nodelay() -> None:
    from pixie_integrations.serving.server import ServerStartError, bind_socket

    # Protocol 0 (socket.socket(AF_INET, SOCK_STREAM)) would make asyncio's own loop skip TCP_NODELAY on accepted
    # connections, and each response would wait for the client's delayed ACK.
    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        sock.listen()
        with pytest.raises(ServerStartError, match="already in use"):
            bind_socket("127.0.0.1", sock.getsockname()[1])
    with pytest.raises(ServerStartError, match="cannot serve on host"):
        bind_socket("no-such-host.invalid", 0)
