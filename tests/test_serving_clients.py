"""The clients people already use, pointed at ``pixie-rerank serve`` on loopback: the ``cohere`` v1 and v2 SDKs,
langchain-cohere's ``CohereRerank``, llama-index's ``CohereRerank`` and ``JinaRerank``, and vLLM's request shapes.

Each gets exactly the in-process scores. The server serves the fixed model names those clients send.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
cohere = pytest.importorskip("cohere")

import httpx

from pixie_integrations import PixieScorer
from pixie_integrations.serving import ServerLimits, create_app, serve_in_thread
from pixie_integrations.serving.schemas import document_text
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

QUERY = SAMPLE_QUERIES[0]
DOCS = [*SAMPLE_DOCUMENTS, "짧은 문서"]
KEY = "test-key"
NAMES = ["pixie", "rerank-v3.5", "rerank-english-v3.0", "jina-reranker-v2-base-multilingual"]


@pytest.fixture(scope="module")
def url(tiny_scorer: PixieScorer) -> Iterator[str]:
    app = create_app(tiny_scorer, served_model_name=NAMES, api_key=KEY, limits=ServerLimits(max_documents=64))
    with serve_in_thread(app) as base:
        yield base


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        yield client


def ranked(scorer: PixieScorer, documents: list[str], top_n: int | None = None, **kwargs: object) -> list[tuple]:
    return [(r.index, r.score) for r in scorer.rank(QUERY, documents, top_n=top_n, **kwargs)]  # type: ignore[arg-type]


def assert_same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)


# -- the cohere SDK ---------------------------------------------------------------------------------------------------
def test_cohere_v2_client(url: str, tiny_scorer: PixieScorer) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=url)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3)
    assert_same([(r.index, r.relevance_score) for r in response.results], ranked(tiny_scorer, DOCS, 3))
    assert response.meta.tokens.input_tokens > 0 and response.id.startswith("rerank-")
    # max_tokens_per_doc reads longer documents in chunks of that many tokens and keeps the best, as Cohere's API
    # does (docs/long_documents.md); each result names its winning chunk.
    chunked = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, max_tokens_per_doc=4)
    expected = ranked(tiny_scorer, DOCS, long_documents="chunk", chunk_tokens=4)
    assert_same([(r.index, r.relevance_score) for r in chunked.results], expected)
    assert all(r.pixie_chunk["chunks"] > 1 for r in chunked.results if len(DOCS[r.index]) > 20)


def test_cohere_v1_client_with_objects_rank_fields_and_documents(url: str, tiny_scorer: PixieScorer) -> None:
    client = cohere.Client(api_key=KEY, base_url=url)
    response = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert_same([(r.index, r.relevance_score) for r in response.results], ranked(tiny_scorer, DOCS, 2))
    assert [r.document.text for r in response.results] == [DOCS[r.index] for r in response.results]
    objects = [{"title": f"문서 {i}", "text": d, "id": i} for i, d in enumerate(DOCS)]
    by_text = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=objects)
    assert_same([(r.index, r.relevance_score) for r in by_text.results], ranked(tiny_scorer, DOCS))
    by_fields = client.rerank(
        model="rerank-english-v3.0", query=QUERY, documents=objects, rank_fields=["title", "text"]
    )
    rendered = [document_text(o, ["title", "text"]) for o in objects]
    assert rendered[0] == f"title: 문서 0\ntext: {DOCS[0]}\n"  # YAML lines, Korean kept, never folded
    assert_same([(r.index, r.relevance_score) for r in by_fields.results], ranked(tiny_scorer, rendered))


def test_cohere_client_errors(url: str) -> None:
    with pytest.raises(cohere.core.api_error.ApiError) as info:
        cohere.ClientV2(api_key="wrong", base_url=url).rerank(model="pixie", query=QUERY, documents=DOCS)
    assert info.value.status_code == 401
    with pytest.raises(cohere.core.api_error.ApiError) as info:
        cohere.ClientV2(api_key=KEY, base_url=url).rerank(model="rerank-unknown", query=QUERY, documents=DOCS)
    assert info.value.status_code == 404 and "rerank-unknown" in str(info.value.body)


# -- framework rerankers pointed at the server ------------------------------------------------------------------------
def test_langchain_cohere_rerank(url: str, tiny_scorer: PixieScorer) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    # It sends "max_tokens_per_doc": null and posts to /v2/rerank.
    reranker = CohereRerank(cohere_api_key=KEY, base_url=url, model="rerank-v3.5", top_n=3)
    out = reranker.compress_documents([Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)], QUERY)
    assert_same([(d.metadata["i"], d.metadata["relevance_score"]) for d in out], ranked(tiny_scorer, DOCS, 3))


def test_llama_index_cohere_and_jina_rerank(url: str, tiny_scorer: PixieScorer) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(DOCS)]
    expected = ranked(tiny_scorer, DOCS, 2)
    for reranker in (
        CohereRerank(api_key=KEY, base_url=url, top_n=2),  # model "rerank-english-v3.0"
        JinaRerank(api_key=KEY, base_url=f"{url}/v1", model="jina-reranker-v2-base-multilingual", top_n=2),
    ):
        out = reranker.postprocess_nodes(nodes, query_str=QUERY)
        assert_same([(int(n.node.node_id), n.score) for n in out], expected)


# -- vLLM's and Jina's shapes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_vllm_score_shapes(http: httpx.Client, tiny_scorer: PixieScorer, path: str) -> None:
    one_to_n = http.post(path, json={"model": "pixie", "text_1": QUERY, "text_2": DOCS}).json()
    assert one_to_n["object"] == "list" and one_to_n["model"] == "pixie"
    assert [d["index"] for d in one_to_n["data"]] == list(range(len(DOCS)))
    assert all(d["object"] == "score" for d in one_to_n["data"])
    assert [d["score"] for d in one_to_n["data"]] == pytest.approx(tiny_scorer.score(QUERY, DOCS), abs=1e-6)
    assert one_to_n["usage"]["prompt_tokens"] == one_to_n["usage"]["total_tokens"] > 0
    queries = [SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)] for i in range(len(DOCS))]
    n_to_n = http.post(path, json={"text_1": queries, "text_2": DOCS, "use_activation": False}).json()
    expected = tiny_scorer.score_pairs(list(zip(queries, DOCS, strict=True)), raw=True)
    assert [d["score"] for d in n_to_n["data"]] == pytest.approx(expected, abs=1e-5)
    # A document that reads "text_1" is a document, not vLLM's field.
    ours = http.post(path, json={"queries": QUERY, "documents": ["text_1", "text_2"]}).json()
    assert ours["scores"] == pytest.approx(tiny_scorer.score(QUERY, ["text_1", "text_2"]), abs=1e-6)
    bad = http.post(path, json={"text_1": ["a", "b"], "text_2": ["x", "y", "z"]})
    assert bad.status_code == 422 and "1:1, 1:N or N:N" in bad.json()["error"]["message"]


def test_vllm_rerank_fields_and_per_request_truncation(http: httpx.Client, tiny_scorer: PixieScorer) -> None:
    body = {"query": QUERY, "documents": DOCS, "top_n": 0, "priority": 0, "user": "u1", "request_id": "req-7"}
    everything = http.post("/v1/rerank", json=body).json()
    assert everything["id"] == "req-7" and len(everything["results"]) == len(DOCS)  # top_n 0: all
    # truncate_prompt_tokens is the whole input's limit, applied the PIXIE way: only document tokens are cut.
    limit = len(tiny_scorer._encoder.encode([(QUERY, "")], tiny_scorer.instruction)[0][0]) + 6
    cut = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": limit}).json()
    local = PixieScorer(tiny_scorer.model_name, device="cpu", dtype="float32", max_length=limit)
    assert_same([(r["index"], r["relevance_score"]) for r in cut["results"]], ranked(local, DOCS))
    assert 0 < cut["usage"]["truncated_documents"] <= len(DOCS)
    same = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": -1}).json()
    assert_same([(r["index"], r["relevance_score"]) for r in same["results"]], ranked(tiny_scorer, DOCS))


def test_jina_shape_usage_and_limits(http: httpx.Client) -> None:
    body = http.post("/v1/rerank", json={"model": "pixie", "query": QUERY, "documents": DOCS[:2]}).json()
    assert body["usage"]["total_tokens"] > 0 and body["model"] == "pixie"
    too_many = http.post("/rerank", json={"query": QUERY, "documents": ["d"] * 65})
    assert too_many.status_code == 422 and "at most 64" in too_many.json()["detail"]


# -- auth and disclosure ------------------------------------------------------------------------------------------------
def test_every_route_but_the_probes_needs_the_key(url: str, tiny_scorer: PixieScorer) -> None:
    with httpx.Client(base_url=url, timeout=10) as anonymous:
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/ready").json()["status"] == "ready"  # probes carry no key (--ready-requires-key)
        for method, path in [
            ("GET", "/docs"),
            ("GET", "/redoc"),
            ("GET", "/openapi.json"),
            ("GET", "/v1/models"),
            ("POST", "/rerank"),
            ("POST", "/v2/rerank"),
            ("POST", "/score"),
            ("POST", "/v1/score"),
        ]:
            response = anonymous.request(method, path, json={})
            assert response.status_code == 401, path
            assert response.json()["error"]["type"] == "authentication_error"
        missing = anonymous.get("/nowhere")
        assert missing.status_code == 404 and tiny_scorer.model_name not in missing.text
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as client:
        schema = client.get("/openapi.json").json()
        assert {"/rerank", "/v2/rerank", "/score", "/v1/score"} <= set(schema["paths"])
        assert "RerankRequest" in schema["components"]["schemas"]
        assert client.get("/docs").status_code == 200
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == NAMES
        assert client.get("/ready").json()["status"] == "ready"


def test_object_documents_render_as_yaml_lines() -> None:
    assert document_text("plain", None) == "plain"
    assert document_text({"text": "t", "title": "x"}, None) == "t"
    assert (
        document_text({"title": "a", "text": "b: c", "n": 3}, ["title", "text", "n"])
        == "title: a\ntext: 'b: c'\nn: 3\n"
    )
    assert document_text({"text": "x" * 200}, ["text"]) == "text: " + "x" * 200 + "\n"
    with pytest.raises(ValueError, match="no 'text'"):
        document_text({"title": "a"}, None)


def test_default_served_name_is_never_a_path(tiny_reranker: Path) -> None:
    from pixie_integrations.serving.server import default_served_name

    assert default_served_name(str(tiny_reranker)) == tiny_reranker.name
    assert (
        default_served_name("telepix/PIXIE-Spell-Reranker-Preview-0.6B") == "telepix/PIXIE-Spell-Reranker-Preview-0.6B"
    )
    assert default_served_name("./models/pixie") == "pixie"
