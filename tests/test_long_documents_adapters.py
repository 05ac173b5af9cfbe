"""Long documents through the three framework adapters: the same scores and winning spans as the core, settings that
round-trip through each framework's serialization, per-call overrides, and the caller's objects left alone."""

from __future__ import annotations

import asyncio
import copy

import pytest

from pixie_integrations import LongDocuments, PixieScorer
from pixie_integrations.ranking import CHUNK_METADATA_KEY

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
LONG = " ".join(
    [
        "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석합니다.",
        "The quick brown fox jumps over the lazy dog!",
        "뷁똠 둘째 문장입니다?",
    ]
    * 6
)
TEXTS = [LONG, "short document", LONG[:120]]
SETTINGS = {"long_documents": "chunk", "chunk_tokens": 32, "chunk_overlap": 4, "aggregate": "max"}


def _expected(scorer: PixieScorer, **settings: object) -> dict[str, tuple[float, dict | None]]:
    """The core's score and winning span for each text."""
    ranked = scorer.rank(QUERY, TEXTS, **settings)
    return {r.document: (r.score, r.chunk.to_dict() if r.chunk else None) for r in ranked}


# -- LangChain ----------------------------------------------------------------------------------------------------
def test_langchain_chunks_in_a_retriever_chain_and_round_trips(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("langchain_core")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from pixie_integrations.langchain import PixieRerank

    docs = [Document(page_content=t, metadata={"tags": ["a"]}) for t in TEXTS]
    store = InMemoryVectorStore.from_documents(docs, DeterministicFakeEmbedding(size=16))
    reranker = PixieRerank(scorer=tiny_scorer, top_n=None, **SETTINGS)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=store.as_retriever(k=3))
    got = retriever.invoke(QUERY)
    expected = _expected(tiny_scorer, **SETTINGS)
    assert len(got) == 3
    for doc in got:
        score, span = expected[doc.page_content]
        assert doc.metadata["relevance_score"] == pytest.approx(score, abs=1e-6)
        assert doc.metadata[CHUNK_METADATA_KEY] == span
    # Settings survive pydantic's dump and load; the instance's own object is a LongDocuments.
    dumped = reranker.model_dump(exclude={"scorer"})
    assert {k: dumped[k] for k in SETTINGS} == SETTINGS
    again = PixieRerank(scorer=tiny_scorer, **{k: v for k, v in dumped.items() if k in SETTINGS or k == "top_n"})
    assert again.compress_documents(docs, QUERY) == reranker.compress_documents(docs, QUERY)
    assert asyncio.run(reranker.acompress_documents(docs, QUERY)) == reranker.compress_documents(docs, QUERY)


def test_langchain_per_call_settings_and_no_mutation(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from pixie_integrations.langchain import PixieRerank

    docs = [Document(page_content=t, metadata={"tags": ["a"]}) for t in TEXTS]
    before = copy.deepcopy(docs)
    reranker = PixieRerank(scorer=tiny_scorer, top_n=None)  # truncating by default
    plain = reranker.rerank(docs, QUERY)
    assert all(CHUNK_METADATA_KEY not in r for r in plain)
    assert [r["relevance_score"] for r in plain] == pytest.approx(
        sorted(tiny_scorer.score(QUERY, TEXTS), reverse=True), abs=1e-6
    )
    chunked = reranker.rerank(docs, QUERY, long_documents="chunk", chunk_tokens=32, chunk_overlap=4)
    expected = _expected(tiny_scorer, **SETTINGS)
    for result in chunked:
        score, span = expected[TEXTS[result["index"]]]
        assert result["relevance_score"] == pytest.approx(score, abs=1e-6) and result[CHUNK_METADATA_KEY] == span
    # chunk_tokens at or above every document's length: exactly the truncating path.
    whole = reranker.rerank(docs, QUERY, long_documents="chunk", chunk_tokens=100_000)
    assert [r["relevance_score"] for r in whole] == [r["relevance_score"] for r in plain]
    assert docs == before


def test_langchain_bad_settings_fail_at_construction(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("langchain_core")
    from pydantic import ValidationError

    from pixie_integrations.langchain import PixieRerank

    with pytest.raises(ValidationError, match="aggregate"):
        PixieRerank(scorer=tiny_scorer, long_documents="chunk", aggregate="median")
    with pytest.raises(ValidationError, match="only apply with long_documents='chunk'"):
        PixieRerank(scorer=tiny_scorer, chunk_tokens=64)
    with pytest.raises(ValidationError, match="chunk_overlap=64 must be less than chunk_tokens=32"):
        PixieRerank(scorer=tiny_scorer, long_documents="chunk", chunk_tokens=32, chunk_overlap=64)


# -- LlamaIndex ---------------------------------------------------------------------------------------------------
def test_llama_index_chunks_in_a_query_engine_and_round_trips(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from pixie_integrations.llama_index import PixieRerank

    Settings.llm = MockLLM()
    Settings.embed_model = MockEmbedding(embed_dim=16)
    reranker = PixieRerank(scorer=tiny_scorer, top_n=3, **SETTINGS)
    # Nodes as they are (from_documents would split the long text into nodes of its own).
    index = VectorStoreIndex(nodes=[TextNode(text=t) for t in TEXTS])
    response = index.as_query_engine(similarity_top_k=3, node_postprocessors=[reranker]).query(QUERY)
    expected = _expected(tiny_scorer, **SETTINGS)
    assert len(response.source_nodes) == 3
    for item in response.source_nodes:
        text = item.node.get_content(metadata_mode=MetadataMode.EMBED)  # the text that was scored
        score, span = expected[text]
        assert item.score == pytest.approx(score, abs=1e-6)
        assert item.node.metadata[CHUNK_METADATA_KEY] == span
        # The span is bookkeeping: it stays out of what is embedded and what the LLM reads.
        assert CHUNK_METADATA_KEY not in item.node.get_content(metadata_mode=MetadataMode.LLM)
    again = PixieRerank.from_dict(reranker.to_dict())
    assert again.long_document_settings == LongDocuments("chunk", chunk_tokens=32, chunk_overlap=4, aggregate="max")
    nodes = [NodeWithScore(node=TextNode(text=t, metadata={"tags": ["a"]}), score=0.5) for t in TEXTS]
    before = copy.deepcopy(nodes)
    sync = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    asynced = asyncio.run(reranker.apostprocess_nodes(nodes, QueryBundle(QUERY)))
    assert [n.score for n in sync] == [n.score for n in asynced]
    assert [n.node.metadata for n in sync] == [n.node.metadata for n in asynced]
    assert nodes == before


def test_llama_index_truncates_by_default_and_refuses_bad_settings(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from pixie_integrations.llama_index import PixieRerank

    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in TEXTS]
    plain = PixieRerank(scorer=tiny_scorer, top_n=3).postprocess_nodes(nodes, QueryBundle(QUERY))
    whole = PixieRerank(scorer=tiny_scorer, top_n=3, long_documents="chunk", chunk_tokens=100_000)
    assert [n.score for n in whole.postprocess_nodes(nodes, QueryBundle(QUERY))] == [n.score for n in plain]
    assert all(CHUNK_METADATA_KEY not in n.node.metadata for n in plain)
    with pytest.raises(ValueError, match="aggregate"):
        PixieRerank(scorer=tiny_scorer, long_documents="chunk", aggregate="median")
    with pytest.raises(ValueError, match="only apply with long_documents='chunk'"):
        PixieRerank(scorer=tiny_scorer, max_chunks=3)


# -- Haystack -----------------------------------------------------------------------------------------------------
def test_haystack_chunks_in_a_pipeline_that_round_trips(tiny_reranker) -> None:
    pytest.importorskip("haystack")
    from haystack import Document, Pipeline

    from pixie_integrations.haystack import PixieRanker

    ranker = PixieRanker(model=str(tiny_reranker), dtype="float32", top_k=3, **SETTINGS)
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    loaded = Pipeline.loads(pipeline.dumps())
    params = loaded.get_component("ranker").to_dict()["init_parameters"]
    assert {k: params[k] for k in SETTINGS} == SETTINGS
    docs = [Document(content=t, meta={"tags": ["a"]}) for t in TEXTS]
    before = copy.deepcopy(docs)
    got = loaded.run({"ranker": {"query": QUERY, "documents": docs}})["ranker"]["documents"]
    scorer = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")
    expected = _expected(scorer, **SETTINGS)
    for doc in got:
        score, span = expected[doc.content]
        assert doc.score == pytest.approx(score, abs=1e-6) and doc.meta[CHUNK_METADATA_KEY] == span
    assert {d.id for d in got} == {d.id for d in docs} and docs == before
    asynced = asyncio.run(ranker.run_async(query=QUERY, documents=docs))["documents"]
    assert [(d.id, d.score, d.meta) for d in asynced] == [(d.id, d.score, d.meta) for d in got]


def test_haystack_per_call_override_and_bad_settings(tiny_reranker) -> None:
    pytest.importorskip("haystack")
    from haystack import Document

    from pixie_integrations.haystack import PixieRanker

    ranker = PixieRanker(model=str(tiny_reranker), dtype="float32", top_k=3)
    docs = [Document(content=t) for t in TEXTS]
    plain = ranker.run(query=QUERY, documents=docs)["documents"]
    assert all(CHUNK_METADATA_KEY not in d.meta for d in plain)
    chunked = ranker.run(query=QUERY, documents=docs, long_documents="chunk", chunk_tokens=32, chunk_overlap=4)[
        "documents"
    ]
    expected = _expected(ranker.get_scorer(), **SETTINGS)
    assert all(d.meta[CHUNK_METADATA_KEY] == expected[d.content][1] for d in chunked)
    whole = ranker.run(query=QUERY, documents=docs, long_documents="chunk", chunk_tokens=100_000)["documents"]
    assert [d.score for d in whole] == [d.score for d in plain]
    with pytest.raises(ValueError, match="aggregate must be one of"):
        PixieRanker(model=str(tiny_reranker), long_documents="chunk", aggregate="median")
    with pytest.raises(ValueError, match="only apply with long_documents='chunk'"):
        ranker.run(query=QUERY, documents=docs, long_documents="truncate", chunk_tokens=32)
