"""``RemoteScorer(api="vllm")`` pointed at this project's own server is refused, not answered with wrong scores.

The client applies the template for vLLM and this server applies it again (scores off by a few hundredths, rankings
changed), so the client recognizes the server by the ``X-Pixie-Server`` header of its answers, or by ``owned_by`` in
``/v1/models`` when it asks for the model's name, on the blocking and the async path alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from pixie_integrations import PixieScorer
from pixie_integrations.serving import RemoteScorer, RemoteScorerError, create_app, serve_in_thread
from pixie_integrations.serving.engines import PIXIE_SERVER_HEADER
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

QUERY = SAMPLE_QUERIES[0]
DOCS = list(SAMPLE_DOCUMENTS[:3])


def pixie_app(scorer: PixieScorer) -> FastAPI:
    with TestClient(create_app(scorer)) as client:
        marked = PIXIE_SERVER_HEADER in client.get("/health").headers
    app = create_app(scorer)
    if not marked:  # the server's own header lands separately: until then this test marks the answers itself

        @app.middleware("http")
        async def mark(request, call_next):  # type: ignore[no-untyped-def]
            response = await call_next(request)
            response.headers[PIXIE_SERVER_HEADER] = "pixie-integrations/test"
            return response

    return app


@pytest.fixture(scope="module")
def url(tiny_scorer: PixieScorer) -> Iterator[str]:
    with serve_in_thread(pixie_app(tiny_scorer), start_timeout=20) as base:
        yield base


def refusal(info: pytest.ExceptionInfo[RemoteScorerError], url: str) -> None:
    message = str(info.value)
    assert "\n" not in message
    assert "api='pixie'" in message and url in message
    assert not info.value.retryable


@pytest.mark.parametrize("model", [None, "named"])
def test_vllm_mode_on_this_server_is_refused(url: str, model: str | None) -> None:
    # model=None: the name is asked from /v1/models (owned_by); a given name: the first answer's header.
    with RemoteScorer(url, api="vllm", model=model, retries=0) as remote:
        with pytest.raises(RemoteScorerError, match="pixie-integrations server") as info:
            remote.score(QUERY, DOCS)
        refusal(info, url)


@pytest.mark.parametrize("model", [None, "named"])
def test_vllm_mode_on_this_server_is_refused_async(url: str, model: str | None) -> None:
    async def main() -> None:
        async with RemoteScorer(url, api="vllm", model=model, retries=0) as remote:
            with pytest.raises(RemoteScorerError, match="pixie-integrations server") as info:
                await remote.ascore(QUERY, DOCS)
            refusal(info, url)

    asyncio.run(main())


def test_the_refusal_is_raised_however_the_model_name_is_read(url: str) -> None:
    with RemoteScorer(url, api="vllm") as remote, pytest.raises(RemoteScorerError, match="api='pixie'"):
        _ = remote.model_name


def test_pixie_mode_on_the_same_server_scores(url: str, tiny_scorer: PixieScorer) -> None:
    with RemoteScorer(url) as remote:
        assert remote.score(QUERY, DOCS) == pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-5)
