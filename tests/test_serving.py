"""The serving path against real servers on loopback: our FastAPI app under uvicorn, and a vLLM stand-in.

The stand-in implements vLLM's documented ``/score`` request and response and scores what it receives the way vLLM
scores with a seq-cls model: the (text_1, text_2) pair through the model, nothing added. It runs the tiny model with
sentence-transformers' ``CrossEncoder``, so a RemoteScorer(api="vllm") that matches the local scorer proves the
client-side template is exact.
"""

from __future__ import annotations

import copy
import importlib
import math
import pickle
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from pixie_integrations import LongDocuments, PixieScorer, RankResult, Scorer, format_document, format_query
from pixie_integrations.install import install_hint
from pixie_integrations.serving import RemoteScorer, RemoteScorerError, ServerLimits, create_app, serve_in_thread
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

ROOT = Path(__file__).resolve().parents[1]
QUERY = SAMPLE_QUERIES[1]
DOCS = [*SAMPLE_DOCUMENTS, "", "짧은 문서"]
INSTRUCTION = "Given a question about satellite services, retrieve passages that answer it"
STAND_IN_MODEL = "stand-in/pixie-seq-cls"
START_TIMEOUT_S = 20.0


def served_name(scorer: PixieScorer) -> str:
    """The name the server reports by default for a local folder: its base name, never the full path."""
    return Path(scorer.model_name).name


# -- running an app on loopback ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmStandIn:
    """vLLM's ``POST /score`` and ``GET /v1/models`` for a seq-cls reranker, recording every request body."""

    def __init__(self, model_path: Path) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(model_path), device="cpu")
        self.requests: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.add_api_route("/score", self.score, methods=["POST"])
        self.app.add_api_route("/v1/models", self.models, methods=["GET"])

    async def score(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append(body)
        text_1, text_2 = body["text_1"], body["text_2"]
        text_1 = [text_1] if isinstance(text_1, str) else text_1
        text_2 = [text_2] if isinstance(text_2, str) else text_2
        if len(text_1) > 1 and len(text_1) != len(text_2):  # vLLM's rule: 1:1, 1:N or N:N
            return _vllm_error(400, "Input lengths must be either 1:1, 1:N or N:N")
        pairs = [[text_1[0] if len(text_1) == 1 else text_1[i], t2] for i, t2 in enumerate(text_2)]
        scores = [float(s) for s in self.model.predict(pairs, batch_size=32, show_progress_bar=False)]
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        # Reversed: the client must place scores by "index", not by position.
        return {
            "id": "score-1",
            "object": "list",
            "created": 0,
            "model": STAND_IN_MODEL,
            "data": data[::-1],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": STAND_IN_MODEL, "object": "model", "owned_by": "vllm"}]}


def _vllm_error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status_code=status)


@pytest.fixture(scope="module")
def server_url(tiny_scorer: PixieScorer) -> Iterator[str]:
    with serve_in_thread(create_app(tiny_scorer), start_timeout=START_TIMEOUT_S) as url:
        yield url


@pytest.fixture(scope="module")
def stand_in(tiny_reranker: Path) -> VllmStandIn:
    return VllmStandIn(tiny_reranker)


@pytest.fixture(scope="module")
def vllm_url(stand_in: VllmStandIn) -> Iterator[str]:
    with serve_in_thread(stand_in.app, start_timeout=START_TIMEOUT_S) as url:
        yield url


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def remote(server_url: str) -> Iterator[RemoteScorer]:
    with RemoteScorer(server_url) as scorer:
        yield scorer


@pytest.fixture(scope="module")
def remote_vllm(vllm_url: str) -> Iterator[RemoteScorer]:
    with RemoteScorer(vllm_url, api="vllm") as scorer:
        yield scorer


# -- the server --------------------------------------------------------------------------------------------------------
def test_health_and_models(http: httpx.Client, tiny_scorer: PixieScorer) -> None:
    assert http.get("/health").json() == {"status": "ok"}  # liveness discloses nothing
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [served_name(tiny_scorer)]
    assert tiny_scorer.model_name not in http.get("/v1/models").text  # the local path is never disclosed


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_equals_the_local_scorer(http: httpx.Client, tiny_scorer: PixieScorer, path: str) -> None:
    response = http.post(path, json={"query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    body = response.json()
    expected = tiny_scorer.rank(QUERY, DOCS)
    assert body["model"] == served_name(tiny_scorer)
    usage = body["usage"]
    assert usage["pairs"] == len(DOCS) and usage["truncated_documents"] == 0
    expected_tokens = sum(
        len(p) for p in tiny_scorer._encoder.encode([(QUERY, d) for d in DOCS], tiny_scorer.instruction)[0]
    )
    assert usage["prompt_tokens"] == usage["total_tokens"] == expected_tokens
    assert body["meta"]["tokens"]["input_tokens"] == expected_tokens
    assert [r["index"] for r in body["results"]] == [r.index for r in expected]
    got = [r["relevance_score"] for r in body["results"]]
    assert got == pytest.approx([r.score for r in expected], abs=1e-6)
    assert got == sorted(got, reverse=True)
    assert all("document" not in r for r in body["results"])  # only with return_documents


def test_rerank_top_n_return_documents_and_document_objects(http: httpx.Client, tiny_scorer: PixieScorer) -> None:
    documents = [{"text": d} if i % 2 else d for i, d in enumerate(DOCS)]  # both forms in one request
    body = http.post(
        "/rerank", json={"query": QUERY, "documents": documents, "top_n": 3, "return_documents": True}
    ).json()
    expected = tiny_scorer.rank(QUERY, DOCS, top_n=3)
    assert [(r["index"], r["document"]) for r in body["results"]] == [(r.index, {"text": r.document}) for r in expected]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-6)
    everything = http.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 100}).json()
    assert len(everything["results"]) == len(DOCS)


def test_rerank_instruction_reaches_the_model(http: httpx.Client, tiny_scorer: PixieScorer) -> None:
    body = http.post("/rerank", json={"query": QUERY, "documents": DOCS, "instruction": INSTRUCTION}).json()
    by_index = {r["index"]: r["relevance_score"] for r in body["results"]}
    expected = tiny_scorer.score(QUERY, DOCS, instruction=INSTRUCTION)
    assert [by_index[i] for i in range(len(DOCS))] == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-6)


def test_empty_documents_give_empty_results(http: httpx.Client) -> None:
    response = http.post("/rerank", json={"query": QUERY, "documents": []})
    assert response.status_code == 200
    assert response.json()["results"] == [] and response.json()["usage"]["pairs"] == 0
    assert http.post("/score", json={"queries": QUERY, "documents": []}).json()["scores"] == []


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"query": QUERY, "documents": DOCS, "top_n": -2}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "top_n": "3"}, "top_n"),
        ({"query": QUERY, "documents": DOCS, "top_n": True}, "top_n"),
        ({"query": QUERY, "documents": "one document"}, "documents"),
        ({"query": QUERY, "documents": ["ok", 7]}, "documents[1] must be a string"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0]"),
        (
            {"query": QUERY, "documents": [{"text": "a"}], "rank_fields": ["title"]},
            "documents[0] has none of the rank_fields",
        ),
        ({"query": QUERY, "documents": [{"text": 3}]}, "documents[0] 'text' must be a string"),
        ({"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ({"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"documents": DOCS}, "query"),
        ({"query": 5, "documents": DOCS}, "query"),
        ({"query": QUERY, "documents": DOCS, "top_k": 3}, "top_k"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents"),
    ],
)
def test_invalid_rerank_requests_are_422_with_a_message(http: httpx.Client, body: dict, mentions: str) -> None:
    response = http.post("/rerank", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and mentions in detail, detail
    error = response.json()["error"]  # the OpenAI-style body vLLM and OpenAI clients parse
    assert error["message"] == detail and error["type"] == "invalid_request_error" and error["code"] == 422


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"query": "q", "documents": ["\\ud800"]}', "not valid JSON"),  # a lone surrogate is not text
        (b"[1, 2]", "body"),
    ],
)
def test_malformed_bodies_get_a_clear_error(http: httpx.Client, content: bytes, mentions: str) -> None:
    response = http.post("/rerank", content=content, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)
    body = response.json()
    assert mentions in body["detail"] and body["error"]["message"] == body["detail"], body


def test_a_request_for_another_model_is_404(http: httpx.Client, tiny_scorer: PixieScorer) -> None:
    response = http.post("/rerank", json={"model": "someone/else", "query": QUERY, "documents": DOCS})
    assert response.status_code == 404
    assert "someone/else" in response.json()["detail"] and served_name(tiny_scorer) in response.json()["detail"]
    assert tiny_scorer.model_name not in response.text
    same = http.post("/rerank", json={"model": served_name(tiny_scorer), "query": QUERY, "documents": DOCS[:2]})
    assert same.status_code == 200


def test_score_one_query_pairwise_and_raw(http: httpx.Client, tiny_scorer: PixieScorer) -> None:
    one = http.post("/score", json={"queries": QUERY, "documents": DOCS}).json()
    assert one["scores"] == pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-6)
    assert one["usage"]["pairs"] == len(DOCS)
    listed = http.post("/score", json={"queries": [QUERY], "documents": DOCS}).json()
    assert listed["scores"] == pytest.approx(one["scores"], abs=1e-6)
    queries = [SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)] for i in range(len(DOCS))]
    pairwise = http.post("/score", json={"queries": queries, "documents": DOCS, "instruction": INSTRUCTION}).json()
    expected = tiny_scorer.score_pairs(list(zip(queries, DOCS, strict=True)), instruction=INSTRUCTION)
    assert pairwise["scores"] == pytest.approx(expected, abs=1e-6)
    raw = http.post("/score", json={"queries": QUERY, "documents": DOCS, "raw": True}).json()
    assert raw["scores"] == pytest.approx(tiny_scorer.score(QUERY, DOCS, raw=True), abs=1e-5)


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"queries": ["a", "b"], "documents": ["x", "y", "z"]}, "2 queries for 3 documents"),
        ({"queries": [], "documents": ["x"]}, "0 queries for 1 documents"),
        ({"queries": QUERY, "documents": DOCS, "raw": "no"}, "raw"),
        ({"queries": 3, "documents": DOCS}, "queries"),
    ],
)
def test_invalid_score_requests_are_422(http: httpx.Client, body: dict, mentions: str) -> None:
    response = http.post("/score", json=body)
    assert response.status_code == 422
    assert mentions in response.json()["detail"], response.json()


def test_api_key_guards_everything_but_health(tiny_scorer: PixieScorer) -> None:
    app = create_app(tiny_scorer, api_key="s3cret", served_model_name="pixie")
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            denied = client.post("/rerank", json={"query": "q", "documents": ["d"]}, headers=headers)
            assert denied.status_code == 401 and "API key" in denied.json()["detail"]
            assert client.get("/v1/models", headers=headers).status_code == 401
        ok = client.post("/rerank", json={"query": "q", "documents": ["d"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["model"] == "pixie"
    with serve_in_thread(app, start_timeout=START_TIMEOUT_S) as url:
        with RemoteScorer(url, headers={"Authorization": "Bearer s3cret"}) as scorer:
            assert scorer.model_name == "pixie"
            assert scorer.score(QUERY, DOCS) == pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-6)
        with RemoteScorer(url, model="pixie") as scorer, pytest.raises(RemoteScorerError, match="HTTP 401.*API key"):
            scorer.score(QUERY, DOCS)


def test_concurrent_requests_equal_serial_ones(remote: RemoteScorer, tiny_scorer: PixieScorer) -> None:
    jobs = [(SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)], DOCS[i % 3 :]) for i in range(16)]
    serial = [tiny_scorer.score(q, d) for q, d in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda job: remote.score(*job), jobs))
    for got, expected in zip(concurrent, serial, strict=True):
        assert got == pytest.approx(expected, abs=1e-6)


# -- RemoteScorer, api="pixie" -----------------------------------------------------------------------------------------
def test_remote_scorer_equals_the_local_scorer(remote: RemoteScorer, tiny_scorer: PixieScorer) -> None:
    assert isinstance(remote, Scorer) and isinstance(tiny_scorer, Scorer)
    assert remote.model_name == served_name(tiny_scorer)  # asked from /v1/models
    scores = remote.score(QUERY, DOCS)
    assert scores == pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-6)
    assert all(type(s) is float for s in scores)
    assert remote.score(QUERY, DOCS, instruction=INSTRUCTION) == pytest.approx(
        tiny_scorer.score(QUERY, DOCS, instruction=INSTRUCTION), abs=1e-6
    )
    assert remote.score(QUERY, DOCS, raw=True) == pytest.approx(tiny_scorer.score(QUERY, DOCS, raw=True), abs=1e-5)
    pairs = [(SAMPLE_QUERIES[i % 5], d) for i, d in enumerate(DOCS)]
    assert remote.score_pairs(pairs) == pytest.approx(tiny_scorer.score_pairs(pairs), abs=1e-6)
    ranked, expected = remote.rank(QUERY, DOCS, top_n=4), tiny_scorer.rank(QUERY, DOCS, top_n=4)
    assert all(isinstance(r, RankResult) for r in ranked)
    assert [(r.index, r.document) for r in ranked] == [(r.index, r.document) for r in expected]
    assert [r.score for r in ranked] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert remote.score(QUERY, []) == [] and remote.score_pairs([]) == []


def test_remote_scorer_instruction_default_is_sent(server_url: str, tiny_scorer: PixieScorer) -> None:
    with RemoteScorer(server_url, instruction=INSTRUCTION, model=served_name(tiny_scorer)) as scorer:
        assert scorer.instruction == INSTRUCTION
        expected = tiny_scorer.score(QUERY, DOCS, instruction=INSTRUCTION)
        assert scorer.score(QUERY, DOCS) == pytest.approx(expected, abs=1e-6)


def test_remote_scorer_checks_input_like_pixie_scorer(remote: RemoteScorer) -> None:
    with pytest.raises(TypeError, match="single str"):
        remote.score(QUERY, "one document")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        remote.score(QUERY, ["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="query"):
        remote.score(None, ["ok"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_n"):
        remote.rank(QUERY, DOCS, top_n=0)
    with pytest.raises(ValueError, match="api"):
        RemoteScorer("http://127.0.0.1:1", api="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_url"):
        RemoteScorer("127.0.0.1:8000")


def test_server_errors_name_the_url_and_status(server_url: str) -> None:
    with (
        RemoteScorer(server_url, model="someone/else") as scorer,
        pytest.raises(RemoteScorerError, match=r"HTTP 404.*someone/else") as info,
    ):
        scorer.score(QUERY, DOCS)
    assert info.value.status_code == 404 and info.value.url == f"{server_url}/score"
    assert server_url in str(info.value)
    with RemoteScorer(server_url + "/v1") as scorer:  # the server answers /v1/score too
        assert scorer.score(QUERY, DOCS[:2]) == pytest.approx(scorer.score(QUERY, DOCS[:2]), abs=1e-6)


def test_connection_refused_says_the_server_is_not_reachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # bound then closed: nothing listens there
    with RemoteScorer(url, timeout=5, retries=0) as scorer:
        with pytest.raises(RemoteScorerError, match=f"not reachable at {url}/score") as info:
            scorer.score(QUERY, DOCS)
        assert info.value.status_code is None
        with pytest.raises(RemoteScorerError, match=f"not reachable at {url}/v1/models"):
            scorer.model_name  # noqa: B018 - discovering the name needs the server


def test_remote_scorer_copies_and_pickles_reconnect(remote: RemoteScorer, tiny_scorer: PixieScorer) -> None:
    for copied in (copy.deepcopy(remote), pickle.loads(pickle.dumps(remote))):
        assert copied is not remote and copied._client is not remote._client
        assert (copied.base_url, copied.api, copied.instruction) == (remote.base_url, remote.api, remote.instruction)
        assert copied.score(QUERY, DOCS[:3]) == pytest.approx(tiny_scorer.score(QUERY, DOCS[:3]), abs=1e-6)
        copied.close()


# -- RemoteScorer, api="vllm" ------------------------------------------------------------------------------------------
def test_vllm_mode_sends_the_template_and_equals_the_local_scorer(
    remote_vllm: RemoteScorer, stand_in: VllmStandIn, tiny_scorer: PixieScorer
) -> None:
    assert remote_vllm.model_name == STAND_IN_MODEL
    stand_in.requests.clear()
    scores = remote_vllm.score(QUERY, DOCS)
    assert scores == pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-5)
    assert all(type(s) is float for s in scores)
    (request,) = stand_in.requests
    assert request["text_1"] == format_query(QUERY)  # one text A for all documents (1:N)
    assert request["text_2"] == [format_document(d) for d in DOCS]
    assert request["model"] == STAND_IN_MODEL
    assert "truncate_prompt_tokens" not in request  # vLLM's truncation would cut the suffix


def test_vllm_mode_pairs_instruction_rank_and_raw(
    remote_vllm: RemoteScorer, stand_in: VllmStandIn, tiny_scorer: PixieScorer
) -> None:
    pairs = [(SAMPLE_QUERIES[i % 5], d) for i, d in enumerate(DOCS)]
    stand_in.requests.clear()
    got = remote_vllm.score_pairs(pairs, instruction=INSTRUCTION)
    assert got == pytest.approx(tiny_scorer.score_pairs(pairs, instruction=INSTRUCTION), abs=1e-5)
    assert stand_in.requests[0]["text_1"] == [format_query(q, INSTRUCTION) for q, _ in pairs]
    ranked, expected = remote_vllm.rank(QUERY, DOCS, top_n=3), tiny_scorer.rank(QUERY, DOCS, top_n=3)
    assert [r.index for r in ranked] == [r.index for r in expected]
    assert [r.score for r in ranked] == pytest.approx([r.score for r in expected], abs=1e-5)
    # raw: the logit, recovered from vLLM's probability on the client.
    assert remote_vllm.score(QUERY, DOCS, raw=True) == pytest.approx(tiny_scorer.score(QUERY, DOCS, raw=True), abs=1e-3)
    assert remote_vllm.score(QUERY, []) == []


def test_vllm_errors_are_reported_with_vllms_message(vllm_url: str) -> None:
    # vLLM's error body is {"error": {"message": ...}}; the client cannot send a bad shape itself, so post one.
    with RemoteScorer(vllm_url, api="vllm") as scorer:
        bad = {"text_1": ["a", "b"], "text_2": ["x", "y", "z"]}
        with pytest.raises(RemoteScorerError, match=r"/score answered HTTP 400: Input lengths must be") as info:
            scorer._request("POST", "/score", bad)
    assert info.value.status_code == 400


def test_concatenating_text_a_and_b_tokenizes_like_the_pair(tiny_scorer: PixieScorer) -> None:
    # Recent vLLM tokenizes text_1 + text_2 as one string for LLM-based rerankers, older ones as a pair: the template
    # puts the boundary after "\n" and before "<Document>", where Qwen's pre-tokenizer always splits, so both agree.
    tokenizer = tiny_scorer.tokenizer
    for query in SAMPLE_QUERIES:
        for document in DOCS:
            a, b = format_query(query), format_document(document)
            assert tokenizer(a + b)["input_ids"] == tokenizer(a)["input_ids"] + tokenizer(b)["input_ids"]


# -- the adapters with a remote scorer ---------------------------------------------------------------------------------
def test_langchain_compression_retriever_with_a_remote_scorer(remote: RemoteScorer, tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("langchain_classic")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from pixie_integrations.langchain import PixieRerank

    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(page_content=t, id=f"doc-{i}") for i, t in enumerate(SAMPLE_DOCUMENTS)])
    base = store.as_retriever(search_kwargs={"k": 6})

    def retrieve(scorer: Scorer) -> list[Document]:
        reranker = PixieRerank(scorer=scorer, top_n=3)
        return ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base).invoke(QUERY)

    local, served = retrieve(tiny_scorer), retrieve(remote)
    assert len(served) == 3 and [d.id for d in served] == [d.id for d in local]
    assert [d.metadata["relevance_score"] for d in served] == pytest.approx(
        [d.metadata["relevance_score"] for d in local], abs=1e-6
    )
    reranker = PixieRerank(scorer=remote)
    assert reranker.model == served_name(tiny_scorer)  # the validator still reads the scorer's model_name
    assert copy.deepcopy(reranker).scorer.base_url == remote.base_url  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="does not match"):
        PixieRerank(scorer=remote, model="someone/else")
    with pytest.raises(ValueError, match="device"):
        PixieRerank(scorer=remote, device="cpu")


def test_llama_index_postprocessor_with_a_remote_scorer(remote: RemoteScorer, tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from pixie_integrations.llama_index import PixieRerank

    def nodes() -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(SAMPLE_DOCUMENTS)]

    local = PixieRerank(scorer=tiny_scorer, top_n=3).postprocess_nodes(nodes(), query_str=QUERY)
    reranker = PixieRerank(scorer=remote, top_n=3)
    assert reranker.model == served_name(tiny_scorer) and reranker.scorer is remote
    served = reranker.postprocess_nodes(nodes(), query_str=QUERY)
    assert [n.node.node_id for n in served] == [n.node.node_id for n in local]
    assert [n.score for n in served] == pytest.approx([n.score for n in local], abs=1e-6)
    # A copy keeps talking to the server instead of loading a local model named like the served one.
    assert isinstance(copy.deepcopy(reranker).scorer, RemoteScorer)
    with pytest.raises(TypeError, match="Scorer"):
        PixieRerank(scorer=object())  # type: ignore[arg-type]


# -- packaging, CLI and serve() ----------------------------------------------------------------------------------------
def test_missing_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # None in sys.modules: the package counts as missing
    for name in list(sys.modules):
        if name == "pixie_integrations.serving" or name.startswith("pixie_integrations.serving."):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=re.escape(install_hint("serve"))):
        importlib.import_module("pixie_integrations.serving")


def test_cli_serve_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixie_integrations.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)
    for name in list(sys.modules):
        if name == "pixie_integrations.serving" or name.startswith("pixie_integrations.serving."):
            monkeypatch.delitem(sys.modules, name)
    assert main(["serve", "--model", "x", "--port", "9"]) == 2
    assert install_hint("serve") in capsys.readouterr().err


def test_cli_help_imports_neither_torch_nor_fastapi() -> None:
    check = (
        "import sys, pixie_integrations.cli as c; p = c.build_parser(); "
        "print(sorted(m for m in ('torch', 'fastapi', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    client = "import sys, pixie_integrations.serving as s; s.RemoteScorer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", client], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # a process that only calls a server does not load torch


def test_cli_serve_passes_its_settings(monkeypatch: pytest.MonkeyPatch, tiny_reranker: Path) -> None:
    from pixie_integrations import serving
    from pixie_integrations.cli import main

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(serving, "serve", lambda *a, **k: calls.append((a, k)))
    argv = [
        "serve",
        "--model",
        str(tiny_reranker),
        "--port",
        "8123",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-length",
        "512",
        "--instruction",
        INSTRUCTION,
        "--api-key",
        "k",
        "--served-model-name",
        "pixie",
        "rerank-v3.5",
        "--max-documents",
        "50",
        "--request-timeout",
        "2.5",
    ]
    assert main(argv) + main([*argv, "--ready-requires-key", "--max-request-tokens", "4096"]) == 0
    ((args, kwargs), (_, more)) = calls
    assert args == (str(tiny_reranker),)
    assert isinstance(kwargs.pop("sock"), socket.socket)  # bound by the CLI before the model loads, then closed
    assert more.pop("ready_requires_key") is True and more.pop("sock") is not None
    assert more.pop("limits") == ServerLimits(max_documents=50, request_timeout=2.5, max_request_tokens=4096)
    assert kwargs == {
        "host": "127.0.0.1",
        "port": 8123,
        "served_model_name": ["pixie", "rerank-v3.5"],
        "api_key": "k",
        "metrics_without_key": False,
        "limits": ServerLimits(max_documents=50, request_timeout=2.5),
        "ready_requires_key": False,
        "long_documents": LongDocuments(),  # truncate: the default strategy
        "device": "cpu",
        "dtype": "float32",
        "max_length": 512,
        "instruction": INSTRUCTION,
    }
    assert more == {k: v for k, v in kwargs.items() if k not in ("limits", "ready_requires_key")}
    with pytest.raises(SystemExit):
        main(["serve", "--port", "0"])
    with pytest.raises(SystemExit):
        main(["serve", "--max-body-bytes", "0"])


def test_an_empty_api_key_is_an_error_not_no_auth(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_scorer: PixieScorer
) -> None:
    from pixie_integrations import serving
    from pixie_integrations.cli import main

    monkeypatch.setattr(serving, "serve", lambda *a, **k: pytest.fail("must not start"))
    assert main(["serve", "--api-key", ""]) == 2
    assert "--api-key is empty" in capsys.readouterr().err
    monkeypatch.setenv("PIXIE_API_KEY", "")
    assert main(["serve"]) == 2
    assert "PIXIE_API_KEY is empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(tiny_scorer, api_key="  ")


def test_serve_loads_the_model_and_runs_uvicorn(
    monkeypatch: pytest.MonkeyPatch, tiny_reranker: Path, tiny_scorer: PixieScorer
) -> None:
    from pixie_integrations.serving import serve

    seen: dict[str, Any] = {}

    def run(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        seen.update(app=server.config.app, address=sockets[0].getsockname(), protocol=server.config.http)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    port = free_port()
    serve(tiny_reranker, port=port, device="cpu", dtype="float32", instruction=INSTRUCTION)
    assert seen["address"] == ("127.0.0.1", port)  # bound by serve() itself, handed to uvicorn
    assert "HeaderTimeout" in seen["protocol"].__name__
    with TestClient(seen["app"]) as client:
        body = client.post("/score", json={"queries": QUERY, "documents": DOCS}).json()
    assert body["scores"] == pytest.approx(tiny_scorer.score(QUERY, DOCS, instruction=INSTRUCTION), abs=1e-6)


@pytest.mark.slow
def test_example_runs_offline_with_tiny_model(run_example: Callable[..., Any]) -> None:
    result = run_example("serving_rerank.py", "--tiny")
    assert "POST /rerank" in result.stdout and "RemoteScorer.rank" in result.stdout
    assert "server stopped" in result.stdout
    difference = float(result.stdout.split("largest difference from the in-process scorer: ")[1].split()[0])
    assert math.isfinite(difference) and difference < 1e-5
