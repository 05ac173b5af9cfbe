"""PixieRerank in real LangChain objects, backed by the tiny PIXIE-shaped model through the real PixieScorer."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnablePassthrough
from langchain_core.tracers.context import collect_runs
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from pixie_integrations import DEFAULT_MODEL, ModelLoadError, PixieScorer
from pixie_integrations.install import clone_command, index_command, install_hint
from pixie_integrations.langchain import PixieRerank
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

ROOT = Path(__file__).resolve().parents[1]
QUERY = SAMPLE_QUERIES[1]
MISSING_MODEL = "/nonexistent/pixie-checkpoint"


class RecordingHandler(BaseCallbackHandler):
    """Records the chain and retriever events LangChain sends, as a tracing backend would see them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _record(self, event: str, run_id: UUID, parent_run_id: UUID | None, **data: Any) -> None:
        self.events.append({"event": event, "run_id": run_id, "parent_run_id": parent_run_id, **data})

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._record("chain_start", run_id, parent_run_id, name=name, inputs=inputs, metadata=metadata)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._record("chain_end", run_id, parent_run_id, outputs=outputs)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._record("chain_error", run_id, parent_run_id, error=error)

    def on_retriever_start(
        self, serialized: Any, query: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._record("retriever_start", run_id, parent_run_id, query=query)

    def rerank_events(self, event: str) -> list[dict[str, Any]]:
        rerank_ids = {e["run_id"] for e in self.events if e["event"] == "chain_start" and e["name"] == "PixieRerank"}
        return [e for e in self.events if e["event"] == event and e["run_id"] in rerank_ids]


class ThreadRecordingScorer(PixieScorer):
    """The real scorer (same shared weights), noting which thread each score() call ran on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[int] = []

    def score(self, *args: Any, **kwargs: Any) -> list[float]:
        self.threads.append(threading.get_ident())
        return super().score(*args, **kwargs)


def make_docs() -> list[Document]:
    return [
        Document(page_content=text, id=f"doc-{i}", metadata={"source": f"s{i}", "nested": {"n": i}})
        for i, text in enumerate(SAMPLE_DOCUMENTS)
    ]


def expected_ranking(
    scorer: PixieScorer, texts: list[str], query: str = QUERY, **kwargs: Any
) -> list[tuple[int, float]]:
    """(index, score) pairs best first, computed straight from PixieScorer.score (stable on ties)."""
    scores = scorer.score(query, texts, **kwargs)
    return sorted(enumerate(scores), key=lambda pair: -pair[1])


def scores_of(docs: Any) -> list[float]:
    return [d.metadata["relevance_score"] for d in docs]


@pytest.fixture
def reranker(tiny_scorer: PixieScorer) -> PixieRerank:
    return PixieRerank(scorer=tiny_scorer)


@pytest.fixture
def vectorstore() -> InMemoryVectorStore:
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=32))
    store.add_documents(make_docs())
    return store


# -- packaging -----------------------------------------------------------------------------------------------------
def test_importing_the_package_does_not_import_langchain() -> None:
    code = "import sys, pixie_integrations; print(sorted(m for m in sys.modules if m.startswith('langchain')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_langchain_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "langchain_core" or m.startswith("langchain_core.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    monkeypatch.delitem(sys.modules, "pixie_integrations.langchain")
    with pytest.raises(ImportError, match=re.escape(install_hint("langchain"))):
        importlib.import_module("pixie_integrations.langchain")


def test_module_exports() -> None:
    module = importlib.import_module("pixie_integrations.langchain")
    assert "PixieRerank" in module.__all__
    from langchain_core.documents import BaseDocumentCompressor

    assert issubclass(PixieRerank, BaseDocumentCompressor)


# -- construction --------------------------------------------------------------------------------------------------
def test_defaults_and_lazy_loading() -> None:
    reranker = PixieRerank(model=MISSING_MODEL)  # nothing is loaded yet, so a missing path is not an error here
    assert (PixieRerank().model, reranker.top_n, reranker.score_threshold) == (DEFAULT_MODEL, 3, None)
    with pytest.raises(ModelLoadError):
        reranker.compress_documents([Document(page_content="x")], QUERY)


def test_every_field_has_a_one_line_docstring() -> None:
    assert set(PixieRerank.model_fields) >= {
        "model",
        "top_n",
        "instruction",
        "score_threshold",
        "scorer",
        "device",
        "dtype",
        "max_length",
    }
    for name, field in PixieRerank.model_fields.items():
        assert field.description and "\n" not in field.description, name


@pytest.mark.parametrize("kwargs", [{"top_k": 3}, {"batch_size": 8}, {"modle": "x"}])
def test_unknown_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PixieRerank(**kwargs)


@pytest.mark.parametrize("top_n", [0, -1, -3])
def test_non_positive_top_n_is_rejected_at_construction(top_n: int) -> None:
    with pytest.raises(ValueError, match="top_n"):
        PixieRerank(top_n=top_n)


def test_max_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_length"):
        PixieRerank(max_length=0)


def test_path_model_is_accepted(tiny_reranker: Path) -> None:
    assert PixieRerank(model=tiny_reranker).model == str(tiny_reranker)


def test_given_scorer_is_used_and_names_the_model(tiny_scorer: PixieScorer) -> None:
    reranker = PixieRerank(scorer=tiny_scorer)
    assert reranker.get_scorer() is tiny_scorer
    assert reranker.model == tiny_scorer.model_name
    # A dump/validate round trip (explicit None settings, matching model) rebuilds the same reranker.
    again = PixieRerank.model_validate(reranker.model_dump())
    assert again.get_scorer() is tiny_scorer and again.model == reranker.model


@pytest.mark.parametrize("kwargs", [{"device": "cpu"}, {"dtype": "float32"}, {"max_length": 128}, {"model": "other"}])
def test_settings_that_a_given_scorer_would_ignore_are_errors(tiny_scorer: PixieScorer, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PixieRerank(scorer=tiny_scorer, **kwargs)


def test_created_scorer_is_cached_and_shares_weights(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    a = PixieRerank(model=str(tiny_reranker), device="cpu", dtype="float32")
    b = PixieRerank(model=str(tiny_reranker), device="cpu", dtype="float32", top_n=None)
    docs = make_docs()
    out = a.compress_documents(docs, QUERY)
    first = a.get_scorer()
    a.compress_documents(docs, QUERY)
    assert a.get_scorer() is first  # one scorer per instance
    assert b.get_scorer().model is tiny_scorer.model  # and the weights are loaded once per process
    assert scores_of(out) == [s for _, s in expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)[:3]]


# -- compress_documents --------------------------------------------------------------------------------------------
def test_compress_documents_scores_sorts_and_keeps_metadata(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    docs = make_docs()
    out = reranker.compress_documents(docs, QUERY)
    expected = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)[:3]
    assert [d.id for d in out] == [f"doc-{i}" for i, _ in expected]
    assert [d.metadata["relevance_score"] for d in out] == [score for _, score in expected]
    assert all(type(d.metadata["relevance_score"]) is float for d in out)
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == sorted(scores, reverse=True)
    for doc in out:
        i = int(doc.id.removeprefix("doc-"))
        assert doc.page_content == SAMPLE_DOCUMENTS[i]
        assert doc.metadata["source"] == f"s{i}" and doc.metadata["nested"] == {"n": i}
        assert isinstance(doc, Document)


def test_caller_documents_are_not_mutated(reranker: PixieRerank) -> None:
    docs = make_docs()
    docs[0].metadata["relevance_score"] = 123.0
    before = copy.deepcopy(docs)
    out = reranker.compress_documents(docs, QUERY)
    assert docs == before
    assert docs[0].metadata["relevance_score"] == 123.0
    originals = {id(d) for d in docs} | {id(d.metadata) for d in docs}
    assert not any(id(d) in originals or id(d.metadata) in originals for d in out)


def test_stale_relevance_score_is_replaced(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    docs = [d.model_copy(update={"metadata": {**d.metadata, "relevance_score": 99.0}}) for d in make_docs()]
    out = PixieRerank(scorer=tiny_scorer, top_n=None).compress_documents(docs, QUERY)
    assert scores_of(out) == [s for _, s in expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)]
    assert all(d.metadata["relevance_score"] < 1.0 for d in out)


@pytest.mark.parametrize("top_n, expected_len", [(None, 8), (100, 8), (8, 8), (1, 1), (5, 5)])
def test_top_n(tiny_scorer: PixieScorer, top_n: int | None, expected_len: int) -> None:
    out = PixieRerank(scorer=tiny_scorer, top_n=top_n).compress_documents(make_docs(), QUERY)
    full = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)
    assert [d.id for d in out] == [f"doc-{i}" for i, _ in full[:expected_len]]


def test_score_threshold_filters_before_top_n(tiny_scorer: PixieScorer) -> None:
    full = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)
    threshold = full[4][1]  # exactly five documents score at or above it
    kept = PixieRerank(scorer=tiny_scorer, top_n=None, score_threshold=threshold).compress_documents(make_docs(), QUERY)
    assert [d.id for d in kept] == [f"doc-{i}" for i, _ in full[:5]]
    capped = PixieRerank(scorer=tiny_scorer, top_n=3, score_threshold=threshold).compress_documents(make_docs(), QUERY)
    assert [d.id for d in capped] == [f"doc-{i}" for i, _ in full[:3]]
    too_high = PixieRerank(scorer=tiny_scorer, score_threshold=full[0][1] + 1e-6)
    assert too_high.compress_documents(make_docs(), QUERY) == []


def test_instruction_reaches_the_model(tiny_scorer: PixieScorer) -> None:
    instruction = "Given a question about satellites, retrieve passages about defence services"
    out = PixieRerank(scorer=tiny_scorer, top_n=None, instruction=instruction).compress_documents(make_docs(), QUERY)
    with_instruction = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS, instruction=instruction)
    assert [d.metadata["relevance_score"] for d in out] == [s for _, s in with_instruction]
    default = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)
    assert sorted(s for _, s in with_instruction) != sorted(s for _, s in default)


def test_empty_input_makes_no_model_call() -> None:
    handler = RecordingHandler()
    reranker = PixieRerank(model=MISSING_MODEL)  # any model call would raise ModelLoadError
    assert reranker.compress_documents([], QUERY, callbacks=[handler]) == []
    assert reranker.rerank([], QUERY) == []
    assert asyncio.run(reranker.acompress_documents([], QUERY)) == []
    assert handler.events == []


def test_non_str_page_content_is_a_type_error(reranker: PixieRerank) -> None:
    bad = Document(page_content="fine")
    bad.page_content = 42  # type: ignore[assignment]  # Document does not validate assignment
    with pytest.raises(TypeError, match=r"documents\[1\]\.page_content must be a str"):
        reranker.compress_documents([Document(page_content="ok"), bad], QUERY)
    with pytest.raises(TypeError, match="must be a str, a langchain Document or a dict"):
        reranker.rerank(["ok", 3.5], QUERY)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="query"):
        reranker.compress_documents(make_docs(), None)  # type: ignore[arg-type]


# -- rerank() ------------------------------------------------------------------------------------------------------
def test_rerank_returns_cohere_shaped_results(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    mixed: list[str | Document] = [SAMPLE_DOCUMENTS[0], *make_docs()[1:]]
    results = reranker.rerank(mixed, QUERY)
    expected = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)
    assert results == [{"index": i, "relevance_score": s} for i, s in expected[:3]]  # the instance's top_n
    assert all(set(r) == {"index", "relevance_score"} and type(r["relevance_score"]) is float for r in results)
    assert len(reranker.rerank(mixed, QUERY, top_n=None)) == len(mixed)
    assert [r["index"] for r in reranker.rerank(mixed, QUERY, top_n=6)] == [i for i, _ in expected[:6]]
    # Cohere's meaning: top_n <= 0 (its default is -1) is "not given", so the instance's top_n applies
    assert reranker.rerank(mixed, QUERY, top_n=0) == results
    assert reranker.rerank(mixed, QUERY, top_n=-1) == results
    for bad in (True, 1.5, "3"):
        with pytest.raises(ValueError, match="top_n"):
            reranker.rerank(mixed, QUERY, top_n=bad)  # type: ignore[arg-type]


def test_rerank_call_arguments_override_the_instance(tiny_scorer: PixieScorer) -> None:
    reranker = PixieRerank(scorer=tiny_scorer, top_n=2, score_threshold=2.0)  # nothing scores above 2
    assert reranker.rerank(SAMPLE_DOCUMENTS, QUERY) == []
    full = reranker.rerank(SAMPLE_DOCUMENTS, QUERY, top_n=None, score_threshold=None)
    assert len(full) == len(SAMPLE_DOCUMENTS)
    instruction = "Retrieve passages written in English"
    per_call = reranker.rerank(SAMPLE_DOCUMENTS, QUERY, top_n=None, score_threshold=0.0, instruction=instruction)
    assert per_call == [
        {"index": i, "relevance_score": s}
        for i, s in expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS, instruction=instruction)
    ]


def test_ties_keep_input_order(reranker: PixieRerank) -> None:
    texts = [SAMPLE_DOCUMENTS[0], SAMPLE_DOCUMENTS[1], SAMPLE_DOCUMENTS[0], SAMPLE_DOCUMENTS[0]]
    results = reranker.rerank(texts, QUERY, top_n=None)
    duplicates = [r for r in results if r["index"] in (0, 2, 3)]
    assert len({r["relevance_score"] for r in duplicates}) == 1
    assert [r["index"] for r in duplicates] == [0, 2, 3]


# -- tracing -------------------------------------------------------------------------------------------------------
def test_rerank_is_a_traced_child_run(reranker: PixieRerank) -> None:
    handler = RecordingHandler()
    docs = make_docs()
    out = reranker.compress_documents(docs, QUERY, callbacks=[handler])
    (start,) = handler.rerank_events("chain_start")
    (end,) = handler.rerank_events("chain_end")
    assert start["inputs"] == {"query": QUERY, "document_count": len(docs)}
    assert start["metadata"]["top_n"] == 3 and start["metadata"]["pixie_model"] == reranker.model
    assert end["outputs"]["scores"] == [d.metadata["relevance_score"] for d in out]
    assert [docs[i].id for i in end["outputs"]["indices"]] == [d.id for d in out]
    json.dumps(end["outputs"])  # plain floats and ints: any tracer can serialise them


def test_errors_are_reported_to_the_run(reranker: PixieRerank) -> None:
    handler = RecordingHandler()
    bad = Document(page_content="fine")
    bad.page_content = None  # type: ignore[assignment]
    with pytest.raises(TypeError):
        reranker.compress_documents([bad], QUERY, callbacks=[handler])
    (error,) = handler.rerank_events("chain_error")
    assert isinstance(error["error"], TypeError)
    assert handler.rerank_events("chain_end") == []


def test_run_nests_under_the_retriever_run(reranker: PixieRerank, vectorstore: InMemoryVectorStore) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=vectorstore.as_retriever())
    handler = RecordingHandler()
    retriever.invoke(QUERY, config={"callbacks": [handler]})
    root = next(e for e in handler.events if e["event"] == "retriever_start" and e["parent_run_id"] is None)
    (start,) = handler.rerank_events("chain_start")
    assert start["parent_run_id"] == root["run_id"]


async def test_async_run_nests_under_the_retriever_run(reranker: PixieRerank, vectorstore: InMemoryVectorStore) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=vectorstore.as_retriever())
    handler = RecordingHandler()
    out = await retriever.ainvoke(QUERY, config={"callbacks": [handler]})
    root = next(e for e in handler.events if e["event"] == "retriever_start" and e["parent_run_id"] is None)
    (start,) = handler.rerank_events("chain_start")
    (end,) = handler.rerank_events("chain_end")
    assert start["parent_run_id"] == root["run_id"]
    assert end["outputs"]["scores"] == [d.metadata["relevance_score"] for d in out]


def test_langchain_tracer_records_the_run(reranker: PixieRerank, vectorstore: InMemoryVectorStore) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=vectorstore.as_retriever())
    with collect_runs() as collector:  # a real BaseTracer, the machinery LangSmith's tracer shares
        out = retriever.invoke(QUERY)
    (root,) = collector.traced_runs
    (rerank_run,) = [r for r in root.child_runs if r.name == "PixieRerank"]
    assert (root.run_type, rerank_run.run_type) == ("retriever", "chain")
    assert rerank_run.outputs["scores"] == [d.metadata["relevance_score"] for d in out]
    assert rerank_run.error is None


# -- real pipelines ------------------------------------------------------------------------------------------------
def test_contextual_compression_retriever(
    reranker: PixieRerank, tiny_scorer: PixieScorer, vectorstore: InMemoryVectorStore
) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = vectorstore.as_retriever(search_kwargs={"k": 6})
    candidates = base.invoke(QUERY)
    out = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base).invoke(QUERY)
    texts = [d.page_content for d in candidates]
    expected = expected_ranking(tiny_scorer, texts)[:3]
    assert [d.id for d in out] == [candidates[i].id for i, _ in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([s for _, s in expected], abs=1e-6)


async def test_contextual_compression_retriever_async(
    reranker: PixieRerank, tiny_scorer: PixieScorer, vectorstore: InMemoryVectorStore
) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = vectorstore.as_retriever(search_kwargs={"k": 6})
    candidates = await base.ainvoke(QUERY)
    out = await ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base).ainvoke(QUERY)
    expected = expected_ranking(tiny_scorer, [d.page_content for d in candidates])[:3]
    assert [d.id for d in out] == [candidates[i].id for i, _ in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_document_compressor_pipeline(tiny_scorer: PixieScorer, vectorstore: InMemoryVectorStore) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline

    instruction = "Retrieve passages written in English"
    # The second reranker rescores the first one's output: its scores must replace the first one's.
    pipeline = DocumentCompressorPipeline(
        transformers=[
            PixieRerank(scorer=tiny_scorer, top_n=5),
            PixieRerank(scorer=tiny_scorer, top_n=2, instruction=instruction),
        ]
    )
    base = vectorstore.as_retriever(search_kwargs={"k": 8})
    handler = RecordingHandler()
    out = ContextualCompressionRetriever(base_compressor=pipeline, base_retriever=base).invoke(
        QUERY, config={"callbacks": [handler]}
    )
    assert len(handler.rerank_events("chain_end")) == 2  # callbacks reached both stages
    first_stage = [SAMPLE_DOCUMENTS[i] for i, _ in expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)[:5]]
    second = expected_ranking(tiny_scorer, first_stage, instruction=instruction)[:2]
    assert [d.page_content for d in out] == [first_stage[i] for i, _ in second]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([s for _, s in second], abs=1e-6)


async def test_document_compressor_pipeline_async(tiny_scorer: PixieScorer) -> None:
    from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline

    pipeline = DocumentCompressorPipeline(transformers=[PixieRerank(scorer=tiny_scorer, top_n=4)])
    out = await pipeline.acompress_documents(make_docs(), QUERY)
    expected = expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)[:4]
    assert [d.id for d in out] == [f"doc-{i}" for i, _ in expected]


def _lcel_chain(reranker: PixieRerank, vectorstore: InMemoryVectorStore) -> Any:
    def rerank(inputs: dict[str, Any], config: RunnableConfig) -> list[Document]:
        return list(reranker.compress_documents(inputs["docs"], inputs["query"], callbacks=config.get("callbacks")))

    async def arerank(inputs: dict[str, Any], config: RunnableConfig) -> list[Document]:
        docs = await reranker.acompress_documents(inputs["docs"], inputs["query"], callbacks=config.get("callbacks"))
        return list(docs)

    return (
        {"docs": vectorstore.as_retriever(search_kwargs={"k": 6}), "query": RunnablePassthrough()}
        | RunnableLambda(rerank, afunc=arerank, name="rerank")
        | RunnableLambda(lambda docs: [(d.id, d.metadata["relevance_score"]) for d in docs])
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_lcel_chain(
    mode: str, reranker: PixieRerank, tiny_scorer: PixieScorer, vectorstore: InMemoryVectorStore
) -> None:
    chain = _lcel_chain(reranker, vectorstore)
    handler = RecordingHandler()
    config: RunnableConfig = {"callbacks": [handler]}
    out = chain.invoke(QUERY, config=config) if mode == "sync" else await chain.ainvoke(QUERY, config=config)
    candidates = vectorstore.as_retriever(search_kwargs={"k": 6}).invoke(QUERY)
    expected = expected_ranking(tiny_scorer, [d.page_content for d in candidates])[:3]
    assert [doc_id for doc_id, _ in out] == [candidates[i].id for i, _ in expected]
    assert [score for _, score in out] == pytest.approx([s for _, s in expected], abs=1e-6)
    (start,) = handler.rerank_events("chain_start")
    step = next(e for e in handler.events if e["event"] == "chain_start" and e["name"] == "rerank")
    assert start["parent_run_id"] == step["run_id"]


def test_lcel_batch(reranker: PixieRerank, vectorstore: InMemoryVectorStore) -> None:
    outs = _lcel_chain(reranker, vectorstore).batch(SAMPLE_QUERIES[:3])
    assert [len(o) for o in outs] == [3, 3, 3]
    assert all(o == sorted(o, key=lambda pair: -pair[1]) for o in outs)


# -- async ---------------------------------------------------------------------------------------------------------
async def test_async_scoring_awaits_the_scorers_ascore(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    # PixieScorer.ascore awaits the model's batching engine: the event loop is never blocked, no thread is held.
    scorer = ThreadRecordingScorer(str(tiny_reranker), device="cpu", dtype="float32")
    reranker = PixieRerank(scorer=scorer, top_n=None)
    docs = make_docs()
    out = await reranker.acompress_documents(docs, QUERY)
    assert scorer.threads == []  # the sync score() was not used from async code
    assert scores_of(out) == pytest.approx([s for _, s in expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)], abs=1e-6)
    assert docs == make_docs()
    got = await reranker.arerank(SAMPLE_DOCUMENTS, QUERY, top_n=2)
    want = reranker.rerank(SAMPLE_DOCUMENTS, QUERY, top_n=2)
    assert [r["index"] for r in got] == [r["index"] for r in want]
    assert [r["relevance_score"] for r in got] == pytest.approx([r["relevance_score"] for r in want], abs=1e-6)


async def test_a_scorer_without_ascore_runs_off_the_event_loop(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    class SyncOnly(ThreadRecordingScorer):
        ascore = None  # type: ignore[assignment]

    scorer = SyncOnly(str(tiny_reranker), device="cpu", dtype="float32")
    out = await PixieRerank(scorer=scorer, top_n=None).acompress_documents(make_docs(), QUERY)
    assert scorer.threads and threading.get_ident() not in scorer.threads
    assert scores_of(out) == [s for _, s in expected_ranking(tiny_scorer, SAMPLE_DOCUMENTS)]


async def test_concurrent_async_calls_match_sync(tiny_reranker: Path) -> None:
    # The first calls also create the scorer (in the worker threads); they must all end up with one scorer.
    reranker = PixieRerank(model=str(tiny_reranker), device="cpu", dtype="float32")
    concurrent = await asyncio.gather(*(reranker.acompress_documents(make_docs(), q) for q in SAMPLE_QUERIES))
    sync = [reranker.compress_documents(make_docs(), q) for q in SAMPLE_QUERIES]
    assert [[d.id for d in docs] for docs in concurrent] == [[d.id for d in docs] for docs in sync]
    assert [[d.metadata for d in docs] for docs in concurrent] == [[d.metadata for d in docs] for docs in sync]


# -- docs and example ----------------------------------------------------------------------------------------------
def test_docs_page_covers_every_field() -> None:
    page = (ROOT / "docs" / "langchain.md").read_text(encoding="utf-8")
    assert clone_command("langchain") in page and index_command("langchain") in page
    for name in PixieRerank.model_fields:
        assert f"`{name}`" in page, name


@pytest.mark.slow
def test_example_runs_offline_with_tiny_model(run_example: Callable[..., Any]) -> None:
    result = run_example("langchain_rerank.py", "--tiny")
    assert "chain: PixieRerank" in result.stdout
    assert "ContextualCompressionRetriever" in result.stdout
