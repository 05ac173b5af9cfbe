"""Long documents over HTTP: Cohere's max_chunks_per_doc (v1) and max_tokens_per_doc (v2) through the real ``cohere``
SDK, the server's --long-documents default, this server's own fields through RemoteScorer, bad settings as 4xx, the
CLI flags, and the Ray paths passing the settings through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
cohere = pytest.importorskip("cohere")

import httpx

from pixie_integrations import LongDocuments, PixieScorer
from pixie_integrations.serving import RemoteScorer, create_app, serve_in_thread

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
LONG = " ".join(
    [
        "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석합니다.",
        "The quick brown fox jumps over the lazy dog!",
    ]
    * 8
)
DOCS = [LONG, "짧은 문서", LONG[:100]]
KEY = "test-key"


@pytest.fixture(scope="module")
def url(tiny_scorer: PixieScorer) -> Iterator[str]:
    app = create_app(tiny_scorer, served_model_name=["pixie", "rerank-v3.5", "rerank-english-v3.0"], api_key=KEY)
    with serve_in_thread(app) as base:
        yield base


def _expected(scorer: PixieScorer, **settings: object) -> list[tuple[int, float, dict]]:
    return [(r.index, r.score, r.chunk.to_dict()) for r in scorer.rank(QUERY, DOCS, **settings)]  # type: ignore[union-attr,arg-type]


def _same(got: list[tuple[int, float, dict]], expected: list[tuple[int, float, dict]]) -> None:
    assert [(i, c) for i, _, c in got] == [(i, c) for i, _, c in expected]
    assert [s for _, s, _ in got] == pytest.approx([s for _, s, _ in expected], abs=1e-6)


def test_cohere_v2_max_tokens_per_doc_chunks_and_returns_the_span(url: str, tiny_scorer: PixieScorer) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=url)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, max_tokens_per_doc=24)
    got = [(r.index, r.relevance_score, r.pixie_chunk) for r in response.results]  # the SDK keeps extra fields
    _same(got, _expected(tiny_scorer, long_documents="chunk", chunk_tokens=24))
    assert next(c for i, _, c in got if i == 0)["chunks"] > 1  # the long document was read in chunks


def test_cohere_v1_max_chunks_per_doc_caps_the_chunks(url: str, tiny_scorer: PixieScorer) -> None:
    client = cohere.Client(api_key=KEY, base_url=url)
    response = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, max_chunks_per_doc=2)
    got = [(r.index, r.relevance_score, r.pixie_chunk) for r in response.results]
    # No chunk size given: chunks fill max_length, so only a document longer than that would be cut in two.
    _same(got, _expected(tiny_scorer, long_documents="chunk", max_chunks=2))
    # Both of Cohere's fields in one request (the v1 SDK sends only the first): chunks of 24 tokens, at most 2.
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        body = {"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 2, "max_tokens_per_doc": 24}
        both = http.post("/v1/rerank", json=body).json()
    expected = _expected(tiny_scorer, long_documents="chunk", chunk_tokens=24, max_chunks=2)
    _same([(r["index"], r["relevance_score"], r["pixie_chunk"]) for r in both["results"]], expected)
    dropped = next(c for i, _, c in expected if i == 0)["chunks_dropped"]
    assert dropped > 0 and any("max_chunks" in w for w in both["meta"]["warnings"])  # counted, and said


def test_own_fields_truncate_with_max_tokens_per_doc(url: str, tiny_scorer: PixieScorer) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        body = {"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 8, "long_documents": "truncate"}
        answer = http.post("/v2/rerank", json=body).json()
    expected = tiny_scorer.rank(QUERY, DOCS, max_doc_tokens=8)
    assert [r["index"] for r in answer["results"]] == [r.index for r in expected]
    assert all("pixie_chunk" not in r for r in answer["results"])


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"long_documents": "chunk", "aggregate": "median"}, "aggregate"),
        ({"long_documents": "chunk", "chunk_tokens": 8, "chunk_overlap": 8}, "chunk_overlap=8 must be less than"),
        ({"long_documents": "split"}, "long_documents"),
        ({"chunk_tokens": 2, "long_documents": "chunk"}, "chunk_tokens"),
    ],
)
def test_bad_settings_are_a_422_with_a_sentence(url: str, extra: dict, words: str) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        response = http.post("/rerank", json={"query": QUERY, "documents": DOCS, **extra})
    assert response.status_code == 422
    assert words in response.text


def test_server_default_chunks_requests_that_ask_nothing(tiny_scorer: PixieScorer) -> None:
    default = LongDocuments("chunk", chunk_tokens=24, aggregate="mean")
    with serve_in_thread(create_app(tiny_scorer, long_documents=default)) as base, httpx.Client(base_url=base) as http:
        plain = http.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()
        asked = http.post("/rerank", json={"query": QUERY, "documents": DOCS, "long_documents": "truncate"}).json()
    _same(
        [(r["index"], r["relevance_score"], r["pixie_chunk"]) for r in plain["results"]],
        _expected(tiny_scorer, long_documents=default),
    )
    assert [r["relevance_score"] for r in asked["results"]] == pytest.approx(
        sorted(tiny_scorer.score(QUERY, DOCS), reverse=True), abs=1e-6
    )


def test_remote_scorer_passes_the_settings_through(url: str, tiny_scorer: PixieScorer) -> None:
    import asyncio

    settings = {"long_documents": "chunk", "chunk_tokens": 24, "chunk_overlap": 4, "chunk_boundary": "sentence"}
    with RemoteScorer(url, model="pixie", headers={"Authorization": f"Bearer {KEY}"}) as remote:
        ranked = remote.rank(QUERY, DOCS, **settings)
        expected = tiny_scorer.rank(QUERY, DOCS, **settings)
        assert [(r.index, r.chunk) for r in ranked] == [(r.index, r.chunk) for r in expected]
        assert [r.score for r in ranked] == pytest.approx([r.score for r in expected], abs=1e-6)
        scores = remote.score(QUERY, DOCS, **settings)
        assert scores == pytest.approx(tiny_scorer.score(QUERY, DOCS, **settings), abs=1e-6)  # type: ignore[arg-type]
        pairs = remote.score_pairs([(QUERY, d) for d in DOCS], **settings)
        assert pairs == pytest.approx(scores, abs=1e-6)
        aranked = asyncio.run(remote.arank(QUERY, DOCS, **settings))
        assert [(r.index, r.chunk) for r in aranked] == [(r.index, r.chunk) for r in expected]
        with pytest.raises(ValueError, match="aggregate must be one of"):
            remote.rank(QUERY, DOCS, long_documents="chunk", aggregate="median")
    with pytest.raises(ValueError, match="needs a pixie-rerank server"):
        RemoteScorer(url, api="tei", model="m").rank(QUERY, DOCS, long_documents="chunk")


def test_serve_flags_are_checked_before_anything_loads(capsys: pytest.CaptureFixture[str]) -> None:
    from pixie_integrations.cli import main

    assert main(["serve", "--model", "./missing", "--chunk-tokens", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--chunk-tokens only apply with --long-documents='chunk'" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal of a bad choice
        main(["serve", "--model", "./missing", "--long-documents", "chunk", "--aggregate", "median"])
    assert exit_info.value.code == 2


def test_chunks_fill_the_per_document_limit_instead_of_a_413(tiny_scorer: PixieScorer, tiny_reranker) -> None:
    from pixie_integrations.serving import ServerLimits

    limits = ServerLimits(max_document_tokens=128)
    with serve_in_thread(create_app(tiny_scorer, limits=limits)) as base, httpx.Client(base_url=base) as http:
        whole = http.post("/rerank", json={"query": QUERY, "documents": DOCS})
        chunked = http.post("/rerank", json={"query": QUERY, "documents": DOCS, "long_documents": "chunk"})
    assert whole.status_code == 413  # one input of the long document is past the limit
    assert chunked.status_code == 200
    # The chunks are what a scorer with max_length=128 cuts: each input within the limit.
    capped = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", max_length=128)
    expected = [(r.index, r.score, r.chunk.to_dict()) for r in capped.rank(QUERY, DOCS, long_documents="chunk")]
    got = [(r["index"], r["relevance_score"], r["pixie_chunk"]) for r in chunked.json()["results"]]
    _same(got, expected)
