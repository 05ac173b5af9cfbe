"""OpenInference RERANKER spans from every entry point, read back from the OpenTelemetry SDK's in-memory exporter.

One SDK provider is set as the global one once for the session (OpenTelemetry lets the global be set only once);
each test clears the exporter. The tracing helper looks the provider up at every call, so it finds this one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pixie_integrations import PixieScorer
from pixie_integrations import tracing as t
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES
from pixie_integrations.tracing import REDACTED, TraceConfig, set_trace_config

ROOT = Path(__file__).resolve().parents[1]
QUERY = SAMPLE_QUERIES[0]
DOCS = list(SAMPLE_DOCUMENTS[:5])
HIDE_VARS = [t.HIDE_INPUTS, t.HIDE_INPUT_TEXT, t.HIDE_OUTPUTS, t.HIDE_OUTPUT_TEXT]

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def _global_provider() -> TracerProvider:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return provider


@pytest.fixture
def spans(_global_provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The exporter, empty; text allowed (OPENINFERENCE_HIDE_INPUTS/OUTPUTS=false, the _TEXT ones unset); the
    default trace config (restored afterwards)."""
    for name in HIDE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(t.HIDE_INPUTS, "false")
    monkeypatch.setenv(t.HIDE_OUTPUTS, "false")
    set_trace_config(None)
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        set_trace_config(None)
        _EXPORTER.clear()


@pytest.fixture
def tracer(_global_provider: TracerProvider) -> trace.Tracer:
    return _global_provider.get_tracer("tests")


def rerankers(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.attributes.get(t.OPENINFERENCE_SPAN_KIND) == "RERANKER"]


def only_reranker(exporter: InMemorySpanExporter) -> ReadableSpan:
    found = rerankers(exporter)
    assert len(found) == 1, [s.name for s in found]
    return found[0]


def documents(span: ReadableSpan, prefix: str) -> list[dict[str, Any]]:
    """The flattened ``prefix.{i}.document.*`` attributes back as one dict per document."""
    out: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        if key.startswith(prefix + "."):
            index, field = key[len(prefix) + 1 :].split(".", 1)
            out.setdefault(int(index), {})[field.removeprefix("document.")] = value
    assert sorted(out) == list(range(len(out)))  # contiguous from 0
    return [out[i] for i in range(len(out))]


# -- the names -----------------------------------------------------------------------------------------------------
def test_attribute_names_are_openinferences() -> None:
    semconv = pytest.importorskip("openinference.semconv.trace")
    assert t.OPENINFERENCE_SPAN_KIND == semconv.SpanAttributes.OPENINFERENCE_SPAN_KIND
    assert t.RERANKER == semconv.OpenInferenceSpanKindValues.RERANKER.value
    assert t.INPUT_VALUE == semconv.SpanAttributes.INPUT_VALUE
    reranker = semconv.RerankerAttributes
    assert t.RERANKER_QUERY == reranker.RERANKER_QUERY
    assert t.RERANKER_MODEL_NAME == reranker.RERANKER_MODEL_NAME
    assert t.RERANKER_TOP_K == reranker.RERANKER_TOP_K
    assert t.RERANKER_INPUT_DOCUMENTS == reranker.RERANKER_INPUT_DOCUMENTS
    assert t.RERANKER_OUTPUT_DOCUMENTS == reranker.RERANKER_OUTPUT_DOCUMENTS
    document = semconv.DocumentAttributes
    assert (t.DOCUMENT_ID, t.DOCUMENT_CONTENT, t.DOCUMENT_SCORE, t.DOCUMENT_METADATA) == (
        document.DOCUMENT_ID,
        document.DOCUMENT_CONTENT,
        document.DOCUMENT_SCORE,
        document.DOCUMENT_METADATA,
    )


# -- PixieScorer ---------------------------------------------------------------------------------------------------
def test_rank_emits_one_reranker_span_with_openinference_and_pixie_attributes(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer
) -> None:
    ranked = tiny_scorer.rank(QUERY, DOCS, top_n=3)
    span = only_reranker(spans)  # score() inside rank() opened no second span
    assert span.name == "PixieScorer.rank"
    assert len(spans.get_finished_spans()) == 1
    a = span.attributes
    assert a[t.RERANKER_QUERY] == QUERY and a[t.INPUT_VALUE] == QUERY
    assert a[t.RERANKER_MODEL_NAME] == tiny_scorer.model_name
    assert a[t.RERANKER_TOP_K] == 3
    assert a[t.PIXIE_INSTRUCTION] == tiny_scorer.instruction
    assert [d["content"] for d in documents(span, t.RERANKER_INPUT_DOCUMENTS)] == DOCS
    outputs = documents(span, t.RERANKER_OUTPUT_DOCUMENTS)
    assert [(d["content"], d["score"]) for d in outputs] == [(r.document, r.score) for r in ranked]
    assert list(a[t.PIXIE_OUTPUT_INDICES]) == [r.index for r in ranked]
    encoded, _ = tiny_scorer.encoder.encode([(QUERY, d) for d in DOCS], tiny_scorer.instruction)
    assert a[t.PIXIE_PAIRS] == len(DOCS)
    assert a[t.PIXIE_TOKENS] == sum(len(pair) for pair in encoded)
    assert a[t.PIXIE_TRUNCATED] == 0
    assert a[t.PIXIE_BATCHES] == len(tiny_scorer.pipeline.plan(encoded)) >= 1
    assert a[t.PIXIE_PREFIX_REUSE] is tiny_scorer.reuse_prefix
    if tiny_scorer.reuse_prefix:  # one query: its prefix is shared by every batch
        assert a[t.PIXIE_SHARED_PREFIX_BATCHES] == a[t.PIXIE_BATCHES]
    assert (a[t.PIXIE_DEVICE], a[t.PIXIE_DTYPE], a[t.PIXIE_FAMILY]) == ("cpu", "float32", "qwen3-seq-cls")
    assert a[t.PIXIE_PACKED] is tiny_scorer.pack
    assert a[t.PIXIE_ENGINE] is False and a[t.PIXIE_RAW] is False
    assert a[t.PIXIE_ENTRY_POINT] == "scorer"
    assert span.status.status_code is StatusCode.UNSET


def test_score_and_score_pairs_record_the_scores_in_input_order(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer
) -> None:
    scores = tiny_scorer.score(QUERY, DOCS, raw=True)
    span = only_reranker(spans)
    assert span.name == "PixieScorer.score"
    assert [(d["content"], d["score"]) for d in documents(span, t.RERANKER_OUTPUT_DOCUMENTS)] == list(zip(DOCS, scores))
    assert span.attributes[t.PIXIE_RAW] is True and t.RERANKER_TOP_K not in span.attributes
    spans.clear()
    pairs = [(SAMPLE_QUERIES[0], DOCS[0]), (SAMPLE_QUERIES[1], DOCS[1])]
    tiny_scorer.score_pairs(pairs)
    span = only_reranker(spans)
    assert span.name == "PixieScorer.score_pairs"
    assert t.RERANKER_QUERY not in span.attributes  # two queries: no single one to report
    assert span.attributes[t.PIXIE_PAIRS] == 2


def test_async_calls_report_the_engines_work(spans: InMemorySpanExporter, tiny_scorer: PixieScorer) -> None:
    ranked = asyncio.run(tiny_scorer.arank(QUERY, DOCS, top_n=2))
    span = only_reranker(spans)
    assert span.name == "PixieScorer.arank"
    a = span.attributes
    assert a[t.PIXIE_ENGINE] is True and a[t.PIXIE_PAIRS] == len(DOCS) and a[t.PIXIE_BATCHES] >= 1
    assert a[t.PIXIE_TOKENS] > 0 and a[t.PIXIE_QUEUED_SECONDS] >= 0
    assert t.PIXIE_PREFIX_RUNS not in a  # the engine does not count them per request: not reported as 0
    assert [d["score"] for d in documents(span, t.RERANKER_OUTPUT_DOCUMENTS)] == [r.score for r in ranked]
    spans.clear()
    asyncio.run(tiny_scorer.ascore_pairs([(QUERY, d) for d in DOCS]))
    assert only_reranker(spans).name == "PixieScorer.ascore_pairs"


def test_the_engines_result_counts_its_batches(tiny_scorer: PixieScorer) -> None:
    result = tiny_scorer.engine.submit([(QUERY, d) for d in DOCS], scorer=tiny_scorer).result(timeout=60)
    assert result.batches >= 1 and result.queued_s >= 0
    assert result.shared_prefix_batches <= result.batches


def test_truncated_documents_are_counted(spans: InMemorySpanExporter, tiny_reranker: Path) -> None:
    probe = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")
    (short,), _ = probe.encoder.encode([(QUERY, "x")], probe.instruction)
    scorer = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", max_length=len(short) + 4)
    scorer.score(QUERY, ["x", "long " * 50, "longer " * 80])
    assert only_reranker(spans).attributes[t.PIXIE_TRUNCATED] == 2


def test_a_failing_call_records_the_error(spans: InMemorySpanExporter, tiny_scorer: PixieScorer) -> None:
    with pytest.raises(ValueError, match="max_doc_tokens"):
        tiny_scorer.score(QUERY, DOCS, max_doc_tokens=0)
    span = only_reranker(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_spans_nest_under_the_current_span(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, tracer: trace.Tracer
) -> None:
    with tracer.start_as_current_span("app") as parent:
        tiny_scorer.score(QUERY, DOCS[:2])
    span = only_reranker(spans)
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id


def test_the_key_attributes_survive_the_sdks_attribute_limit(tiny_scorer: PixieScorer) -> None:
    """The SDK keeps 128 attributes by default and evicts the oldest: documents are written first."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=40))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_trace_config(TraceConfig(tracer_provider=provider, hide_inputs=False))  # its own provider, text allowed
    try:
        tiny_scorer.rank(QUERY, [f"document {i}" for i in range(30)], top_n=5)
    finally:
        set_trace_config(None)
    (span,) = exporter.get_finished_spans()
    a = span.attributes
    assert len(a) == 40
    assert a[t.OPENINFERENCE_SPAN_KIND] == "RERANKER" and a[t.RERANKER_QUERY] == QUERY
    assert a[t.RERANKER_MODEL_NAME] == tiny_scorer.model_name and a[t.PIXIE_PAIRS] == 30


def test_disabled_tracing_emits_nothing(spans: InMemorySpanExporter, tiny_scorer: PixieScorer) -> None:
    set_trace_config(TraceConfig(enabled=False))
    tiny_scorer.rank(QUERY, DOCS)
    assert spans.get_finished_spans() == ()


# -- what is hidden ------------------------------------------------------------------------------------------------
def test_contents_are_hidden_by_default(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in HIDE_VARS:
        monkeypatch.delenv(name, raising=False)
    ranked = tiny_scorer.rank(QUERY, DOCS, top_n=2)
    span = only_reranker(spans)
    text = json.dumps(dict(span.attributes), ensure_ascii=False)
    assert QUERY not in text and not any(doc in text for doc in DOCS) and tiny_scorer.instruction not in text
    assert span.attributes[t.RERANKER_QUERY] == REDACTED
    assert documents(span, t.RERANKER_OUTPUT_DOCUMENTS) == [{"content": REDACTED, "score": r.score} for r in ranked]


def test_contents_are_recorded_when_allowed(spans: InMemorySpanExporter, tiny_scorer: PixieScorer) -> None:
    tiny_scorer.rank(QUERY, DOCS, top_n=2)  # the fixture allows text: OPENINFERENCE_HIDE_INPUTS/OUTPUTS=false
    values = set(only_reranker(spans).attributes.values())
    assert QUERY in values and set(DOCS) <= values and REDACTED not in values


@pytest.mark.parametrize("variable", [t.HIDE_INPUTS, t.HIDE_INPUT_TEXT])
def test_hiding_inputs_redacts_the_query_instruction_and_input_documents(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "TRUE")
    ranked = tiny_scorer.rank(QUERY, DOCS, top_n=2)
    span = only_reranker(spans)
    a = span.attributes
    assert a[t.RERANKER_QUERY] == a[t.INPUT_VALUE] == a[t.PIXIE_INSTRUCTION] == REDACTED
    assert {d["content"] for d in documents(span, t.RERANKER_INPUT_DOCUMENTS)} == {REDACTED}
    # Outputs are not inputs: OpenInference hides them with their own variable.
    assert [d["content"] for d in documents(span, t.RERANKER_OUTPUT_DOCUMENTS)] == [r.document for r in ranked]
    assert QUERY not in a.values()


@pytest.mark.parametrize("variable", [t.HIDE_OUTPUTS, t.HIDE_OUTPUT_TEXT])
def test_hiding_outputs_keeps_their_scores_and_positions(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "true")
    ranked = tiny_scorer.rank(QUERY, DOCS, top_n=2)
    span = only_reranker(spans)
    assert documents(span, t.RERANKER_OUTPUT_DOCUMENTS) == [{"content": REDACTED, "score": r.score} for r in ranked]
    assert list(span.attributes[t.PIXIE_OUTPUT_INDICES]) == [r.index for r in ranked]
    assert span.attributes[t.RERANKER_QUERY] == QUERY


def test_everything_hidden_leaves_no_text_in_the_span(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(t.HIDE_INPUTS, "true")
    monkeypatch.setenv(t.HIDE_OUTPUTS, "true")
    tiny_scorer.rank(QUERY, DOCS)
    text = json.dumps(dict(only_reranker(spans).attributes), ensure_ascii=False)
    assert QUERY not in text and not any(doc in text for doc in DOCS)
    assert tiny_scorer.instruction not in text


def test_code_config_wins_over_the_environment(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(t.HIDE_INPUTS, "true")
    set_trace_config(TraceConfig(hide_inputs=False, hide_outputs=True))
    tiny_scorer.rank(QUERY, DOCS, top_n=1)
    span = only_reranker(spans)
    assert span.attributes[t.RERANKER_QUERY] == QUERY
    assert documents(span, t.RERANKER_OUTPUT_DOCUMENTS)[0]["content"] == REDACTED


def test_an_unparsable_variable_is_ignored_with_a_warning(
    spans: InMemorySpanExporter,
    tiny_scorer: PixieScorer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(t.HIDE_OUTPUTS, "yes please")
    monkeypatch.setattr(t, "_warned_env", set())
    tiny_scorer.rank(QUERY, DOCS[:2])
    span = only_reranker(spans)
    assert documents(span, t.RERANKER_OUTPUT_DOCUMENTS)[0]["content"] == REDACTED  # ignored: the default holds
    assert span.attributes[t.RERANKER_QUERY] == QUERY  # the inputs' variable still applies
    assert "neither true nor false" in caplog.text


# -- the adapters, under their framework's own span ----------------------------------------------------------------
def _assert_merged(spans: InMemorySpanExporter, span: ReadableSpan, pairs: int) -> None:
    """The adapter's span holds the scorer's work; the scorer opened none of its own."""
    assert not [s.name for s in spans.get_finished_spans() if s.name.startswith("PixieScorer")]
    assert span.attributes[t.PIXIE_PAIRS] == pairs and span.attributes[t.PIXIE_BATCHES] >= 1
    assert span.attributes[t.PIXIE_DEVICE] == "cpu"


def test_langchain_rerank_nests_under_the_chains_span(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, tracer: trace.Tracer
) -> None:
    pytest.importorskip("langchain_classic")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from pixie_integrations.langchain import PixieRerank

    docs = [Document(page_content=text, id=f"doc-{i}", metadata={"source": f"s{i}"}) for i, text in enumerate(DOCS)]
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=32))
    store.add_documents(docs)
    retriever = ContextualCompressionRetriever(
        base_compressor=PixieRerank(scorer=tiny_scorer, top_n=2, score_threshold=0.0),
        base_retriever=store.as_retriever(search_kwargs={"k": len(DOCS)}),
    )
    with tracer.start_as_current_span("chain") as parent:
        out = retriever.invoke(QUERY)
    span = only_reranker(spans)
    assert span.name == "PixieRerank" and span.parent.span_id == parent.get_span_context().span_id
    a = span.attributes
    assert a[t.PIXIE_ENTRY_POINT] == "langchain" and a[t.RERANKER_TOP_K] == 2 and a[t.PIXIE_SCORE_THRESHOLD] == 0.0
    inputs = documents(span, t.RERANKER_INPUT_DOCUMENTS)
    assert sorted(d["id"] for d in inputs) == sorted(d.id for d in docs)
    assert all(json.loads(d["metadata"])["source"] == "s" + d["id"][-1] for d in inputs)
    outputs = documents(span, t.RERANKER_OUTPUT_DOCUMENTS)
    assert [(d["id"], d["content"], d["score"]) for d in outputs] == [
        (d.id, d.page_content, d.metadata["relevance_score"]) for d in out
    ]
    _assert_merged(spans, span, len(DOCS))

    spans.clear()
    with tracer.start_as_current_span("async chain") as parent:
        asyncio.run(retriever.ainvoke(QUERY))
    span = only_reranker(spans)
    assert span.parent.span_id == parent.get_span_context().span_id
    _assert_merged(spans, span, len(DOCS))


def test_llama_index_rerank_nests_under_the_query_engines_span(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, tracer: trace.Tracer
) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    from pixie_integrations.llama_index import PixieRerank

    saved = (Settings._llm, Settings._embed_model, Settings._callback_manager)
    Settings.llm, Settings.embed_model = MockLLM(), MockEmbedding(embed_dim=8)
    try:
        index = VectorStoreIndex.from_documents(
            [Document(text=text, id_=f"doc-{i}", metadata={"source": f"s{i}"}) for i, text in enumerate(DOCS)]
        )
        engine = index.as_query_engine(
            similarity_top_k=len(DOCS), node_postprocessors=[PixieRerank(scorer=tiny_scorer, top_n=3)]
        )
        with tracer.start_as_current_span("query engine") as parent:
            response = engine.query(QUERY)
        span = only_reranker(spans)
        assert span.name == "PixieRerank" and span.parent.span_id == parent.get_span_context().span_id
        a = span.attributes
        assert a[t.PIXIE_ENTRY_POINT] == "llama_index" and a[t.RERANKER_TOP_K] == 3 and a[t.RERANKER_QUERY] == QUERY
        inputs = documents(span, t.RERANKER_INPUT_DOCUMENTS)
        assert len(inputs) == len(DOCS) and all("score" in d for d in inputs)  # the retrieval scores
        outputs = documents(span, t.RERANKER_OUTPUT_DOCUMENTS)
        assert [(d["id"], d["score"]) for d in outputs] == [(n.node.node_id, n.score) for n in response.source_nodes]
        assert all(d["content"].endswith(n.node.get_content()) for d, n in zip(outputs, response.source_nodes))
        _assert_merged(spans, span, len(DOCS))

        spans.clear()
        with tracer.start_as_current_span("async query engine") as parent:
            asyncio.run(engine.aquery(QUERY))
        span = only_reranker(spans)
        assert span.parent.span_id == parent.get_span_context().span_id
        _assert_merged(spans, span, len(DOCS))
    finally:
        Settings._llm, Settings._embed_model, Settings._callback_manager = saved


@pytest.fixture
def haystack_otel(tracer: trace.Tracer) -> Iterator[Any]:
    """Haystack's OpenTelemetry tracer enabled (its component spans current while they run), then disabled."""
    pytest.importorskip("haystack")
    otel = pytest.importorskip("haystack_integrations.tracing.opentelemetry")
    from haystack import tracing

    tracing.enable_tracing(otel.OpenTelemetryTracer(tracer))
    try:
        yield tracing.tracer
    finally:
        tracing.disable_tracing()


def _haystack_pipeline(tiny_reranker: Path) -> tuple[Any, list[Any]]:
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack.utils import ComponentDevice

    from pixie_integrations.haystack import PixieRanker

    docs = [Document(content=text, id=f"doc-{i}", meta={"source": f"s{i}"}) for i, text in enumerate(DOCS)]
    store = InMemoryDocumentStore()
    store.write_documents(docs)
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=len(DOCS)))
    ranker = PixieRanker(model=str(tiny_reranker), device=ComponentDevice.from_str("cpu"), dtype="float32", top_k=2)
    pipeline.add_component("ranker", ranker)
    pipeline.connect("retriever.documents", "ranker.documents")
    return pipeline, docs


def test_haystack_ranker_nests_under_its_component_span_and_keeps_content_out_by_default(
    spans: InMemorySpanExporter,
    tiny_reranker: Path,
    tracer: trace.Tracer,
    haystack_otel: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in HIDE_VARS:  # neither switch set: Haystack's own decides
        monkeypatch.delenv(name, raising=False)
    pipeline, docs = _haystack_pipeline(tiny_reranker)
    inputs = {"retriever": {"query": QUERY}, "ranker": {"query": QUERY}}
    with tracer.start_as_current_span("app") as app:
        result = pipeline.run(inputs)
    span = only_reranker(spans)
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    component = by_id[span.parent.span_id]
    assert component.name == "haystack.component.run"
    assert component.attributes["haystack.component.name"] == "ranker"
    ancestors = []
    parent = component.parent
    while parent is not None:  # component -> pipeline -> app
        ancestors.append(by_id[parent.span_id].name)
        parent = by_id[parent.span_id].parent
    assert ancestors[-1] == "app" and app.get_span_context().trace_id == span.context.trace_id
    a = span.attributes
    assert a[t.PIXIE_ENTRY_POINT] == "haystack" and a[t.RERANKER_TOP_K] == 2
    # Haystack keeps content out of traces unless HAYSTACK_CONTENT_TRACING_ENABLED=true: so does this span.
    assert not haystack_otel.is_content_tracing_enabled
    assert a[t.RERANKER_QUERY] == REDACTED
    outputs = documents(span, t.RERANKER_OUTPUT_DOCUMENTS)
    ranked = result["ranker"]["documents"]
    assert outputs == [{"id": d.id, "content": REDACTED, "score": d.score, "metadata": REDACTED} for d in ranked]
    assert {d["id"] for d in documents(span, t.RERANKER_INPUT_DOCUMENTS)} == {d.id for d in docs}
    _assert_merged(spans, span, len(DOCS))


def test_haystack_content_tracing_on_records_the_text(
    spans: InMemorySpanExporter,
    tiny_reranker: Path,
    haystack_otel: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(haystack_otel, "is_content_tracing_enabled", True)
    pipeline, _ = _haystack_pipeline(tiny_reranker)
    result = pipeline.run({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}})
    span = only_reranker(spans)
    assert span.attributes[t.RERANKER_QUERY] == QUERY
    assert [d["content"] for d in documents(span, t.RERANKER_OUTPUT_DOCUMENTS)] == [
        d.content for d in result["ranker"]["documents"]
    ]
    spans.clear()
    asyncio.run(pipeline.run_async({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}}))
    assert only_reranker(spans).attributes[t.RERANKER_QUERY] == QUERY


# -- without the extra ---------------------------------------------------------------------------------------------
_WITHOUT_OPENTELEMETRY = r"""
import asyncio, importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

if sys.argv[2] == "blocked":
    sys.meta_path.insert(0, Blocker())

from pixie_integrations import PixieScorer

model = sys.argv[1]
scorer = PixieScorer(model, device="cpu", dtype="float32")
query, texts = "which one", ["first text", "second text", "third text"]
assert len(scorer.rank(query, texts, top_n=2)) == 2
assert len(asyncio.run(scorer.ascore(query, texts))) == 3
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))

from langchain_core.documents import Document as LCDocument
from pixie_integrations.langchain import PixieRerank as LCRerank
assert len(LCRerank(scorer=scorer, top_n=2).compress_documents([LCDocument(page_content=x) for x in texts], query)) == 2

from llama_index.core.schema import NodeWithScore, TextNode
from pixie_integrations.llama_index import PixieRerank as LIRerank
nodes = [NodeWithScore(node=TextNode(text=x)) for x in texts]
assert len(LIRerank(scorer=scorer, top_n=2).postprocess_nodes(nodes, query_str=query)) == 2

from haystack import Document as HDocument
from haystack.utils import ComponentDevice
from pixie_integrations.haystack import PixieRanker
ranker = PixieRanker(model=model, device=ComponentDevice.from_str("cpu"), dtype="float32", top_k=2)
assert len(ranker.run(query=query, documents=[HDocument(content=x) for x in texts])["documents"]) == 2

print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


@pytest.mark.parametrize("mode", ["blocked", "not imported"])
def test_without_opentelemetry_everything_runs_and_nothing_imports_it(tiny_reranker: Path, mode: str) -> None:
    """Blocked: as if the extra were not installed; the scorer and the three adapters run. Not imported: installed,
    but the application never imported it (so it set no tracer provider): the scorer does not import it either
    (some frameworks import it themselves, so only the scorer's part is checked then)."""
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPENTELEMETRY, str(tiny_reranker), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    after_scorer, after_adapters = out.stdout.strip().splitlines()[-2:]
    assert after_scorer == "[]"
    if mode == "blocked":
        assert after_adapters == "[]"


def test_importing_the_package_imports_no_opentelemetry() -> None:
    code = "import sys, pixie_integrations.scorer; print([m for m in sys.modules if m.startswith('opentelemetry')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_example_runs_offline_with_tiny_model(run_example: Any) -> None:
    result = run_example("tracing.py", "--tiny")
    assert "PixieScorer.rank  (kind RERANKER, parent: answer question)" in result.stdout
    assert "PixieRerank  (kind RERANKER, parent: answer question)" in result.stdout
    assert REDACTED in result.stdout and QUERY not in result.stdout  # hidden by default
    shown = run_example("tracing.py", "--tiny", "--show-text")
    assert QUERY in shown.stdout


def test_a_traceparent_header_becomes_the_parent(spans: InMemorySpanExporter) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01", "content-type": "application/json"}
    with t.rerank_span("pixie.serve /v1/rerank", entry_point="server", kind="SERVER", carrier=headers) as span:
        span.request(query=QUERY, model_name="m")
    (finished,) = spans.get_finished_spans()
    assert finished.kind is trace.SpanKind.SERVER
    assert f"{finished.context.trace_id:032x}" == trace_id and f"{finished.parent.span_id:016x}" == span_id
    assert finished.parent.is_remote
    spans.clear()
    with t.rerank_span("no parent", entry_point="server", kind="SERVER", carrier={}):
        pass
    assert spans.get_finished_spans()[0].parent is None


def test_under_an_http_instrumentations_span_the_server_span_is_its_child(
    spans: InMemorySpanExporter, tracer: trace.Tracer
) -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    with (
        tracer.start_as_current_span("POST /v1/rerank", kind=trace.SpanKind.SERVER) as http,
        t.rerank_span("pixie.serve /v1/rerank", entry_point="server", kind="SERVER", carrier=headers),
    ):
        pass
    ours = spans.get_finished_spans()[0]
    assert ours.parent.span_id == http.get_span_context().span_id and ours.kind is trace.SpanKind.INTERNAL


# -- under OpenInference's own instrumentors (they keep their spans out of the OpenTelemetry context) ---------------
_UNDER_INSTRUMENTOR = r"""
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pixie_integrations import PixieScorer

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
from opentelemetry import trace
trace.set_tracer_provider(provider)
scorer = PixieScorer(sys.argv[1], device="cpu", dtype="float32")
texts = ["first text about satellites", "second text about farms", "third text about the ocean"]

if sys.argv[2] == "langchain":
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore
    from pixie_integrations.langchain import PixieRerank

    LangChainInstrumentor().instrument(tracer_provider=provider)
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=16))
    store.add_documents([Document(page_content=x, id=f"d{i}") for i, x in enumerate(texts)])
    retriever = ContextualCompressionRetriever(
        base_compressor=PixieRerank(scorer=scorer, top_n=2), base_retriever=store.as_retriever()
    )
    retriever.invoke("satellites")
elif sys.argv[2] == "llama_index":
    from openinference.instrumentation.llama_index import LlamaIndexInstrumentor
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM
    from pixie_integrations.llama_index import PixieRerank

    LlamaIndexInstrumentor().instrument(tracer_provider=provider)
    Settings.llm, Settings.embed_model = MockLLM(), MockEmbedding(embed_dim=8)
    index = VectorStoreIndex.from_documents([Document(text=x) for x in texts])
    index.as_query_engine(similarity_top_k=3, node_postprocessors=[PixieRerank(scorer=scorer, top_n=2)]).query("q")
elif sys.argv[2] == "haystack":
    from openinference.instrumentation.haystack import HaystackInstrumentor
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack.utils import ComponentDevice
    from pixie_integrations.haystack import PixieRanker

    HaystackInstrumentor().instrument(tracer_provider=provider)
    store = InMemoryDocumentStore()
    store.write_documents([Document(content=x) for x in texts])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store))
    ranker = PixieRanker(model=sys.argv[1], device=ComponentDevice.from_str("cpu"), dtype="float32", top_k=2)
    pipeline.add_component("ranker", ranker)
    pipeline.connect("retriever.documents", "ranker.documents")
    pipeline.run({"retriever": {"query": "satellites"}, "ranker": {"query": "satellites"}})

print(json.dumps([
    {
        "name": s.name,
        "id": s.context.span_id,
        "trace": s.context.trace_id,
        "parent": s.parent.span_id if s.parent else None,
        "kind": s.attributes.get("openinference.span.kind"),
        "entry": s.attributes.get("pixie.entry_point"),
    }
    for s in exporter.get_finished_spans()
]))
"""


@pytest.mark.parametrize("framework", ["langchain", "llama_index", "haystack"])
def test_under_openinferences_instrumentors_there_is_one_reranker_span_in_the_querys_trace(
    tiny_reranker: Path, framework: str
) -> None:
    """LangChain's instrumentor makes a CHAIN span of the adapter's callback run: the RERANKER span nests under it.
    LlamaIndex's (from the rerank events) and Haystack's (around a ranker's run) make a RERANKER span of their own:
    the pixie.* attributes go onto that one."""
    pytest.importorskip(f"openinference.instrumentation.{framework}")
    out = subprocess.run(
        [sys.executable, "-c", _UNDER_INSTRUMENTOR, str(tiny_reranker), framework],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    by_id = {s["id"]: s for s in found}
    (ours,) = [s for s in found if s["entry"] == framework]
    assert [s["id"] for s in found if s["kind"] == "RERANKER"] == [ours["id"]]
    ancestors = []
    parent = by_id.get(ours["parent"])
    while parent is not None:
        ancestors.append(parent)
        parent = by_id.get(parent["parent"])
    assert ancestors, "the rerank span started a trace of its own"
    if framework == "langchain":
        assert (ancestors[0]["name"], ancestors[0]["kind"]) == ("PixieRerank", "CHAIN")  # the adapter's run
        assert ancestors[-1]["name"] == "ContextualCompressionRetriever"
    elif framework == "llama_index":
        assert ours["name"] == "PixieRerank._postprocess_nodes"  # the instrumentor's span, merged into
        assert ancestors[-1]["name"] == "RetrieverQueryEngine.query"
    else:
        assert ours["name"] == "PixieRanker.run"  # the instrumentor's span, merged into
        assert ancestors[-1]["name"] == "Pipeline.run"


# -- the server ----------------------------------------------------------------------------------------------------
def test_a_server_request_is_one_reranker_span_child_of_its_traceparent(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pixie_integrations.serving import create_app

    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    with TestClient(create_app(tiny_scorer)) as client:
        answer = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2}, headers=headers)
        assert answer.status_code == 200, answer.text
        span = only_reranker(spans)
        assert span.name == "pixie.serve /v1/rerank"
        assert f"{span.context.trace_id:032x}" == trace_id
        # FastAPI traces requests itself where OpenTelemetry is installed: then the span is its endpoint span's
        # INTERNAL child; without such a span, a SERVER span whose parent is the caller's.
        by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
        parent = span.parent
        while parent.span_id in by_id:
            parent = by_id[parent.span_id].parent
        assert parent.is_remote and f"{parent.span_id:016x}" == span_id
        assert span.kind is (trace.SpanKind.SERVER if span.parent.is_remote else trace.SpanKind.INTERNAL)
        a = span.attributes
        assert a[t.PIXIE_ENTRY_POINT] == "server" and a[t.PIXIE_ENGINE] is True
        assert a[t.RERANKER_QUERY] == QUERY and a[t.RERANKER_TOP_K] == 2
        assert a[t.PIXIE_PAIRS] == len(DOCS) and a[t.PIXIE_BATCHES] >= 1
        assert a[t.PIXIE_TOKENS] == answer.json()["meta"]["tokens"]["input_tokens"]
        results = answer.json()["results"]
        assert list(a[t.PIXIE_OUTPUT_INDICES]) == [r["index"] for r in results]
        outputs = documents(span, t.RERANKER_OUTPUT_DOCUMENTS)
        assert [d["score"] for d in outputs] == [r["relevance_score"] for r in results]
        assert [d["content"] for d in documents(span, t.RERANKER_INPUT_DOCUMENTS)] == DOCS

        spans.clear()
        pairs = {"queries": [SAMPLE_QUERIES[0], SAMPLE_QUERIES[1]], "documents": DOCS[:2]}
        answer = client.post("/score", json=pairs)
        assert answer.status_code == 200, answer.text
        span = only_reranker(spans)
        assert t.RERANKER_QUERY not in span.attributes
        outputs = documents(span, t.RERANKER_OUTPUT_DOCUMENTS)
        assert [(d["content"], d["score"]) for d in outputs] == list(zip(DOCS[:2], answer.json()["scores"]))

        spans.clear()
        bad = {"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": -5}  # refused while scoring
        assert client.post("/v1/rerank", json=bad).status_code == 422
        assert [s.status.status_code for s in rerankers(spans)] == [StatusCode.ERROR]


def test_remote_scorer_carries_the_trace_to_the_server(
    spans: InMemorySpanExporter, tiny_scorer: PixieScorer, tracer: trace.Tracer
) -> None:
    pytest.importorskip("fastapi")
    from pixie_integrations.serving import RemoteScorer, create_app, serve_in_thread

    with serve_in_thread(create_app(tiny_scorer)) as url:
        remote = RemoteScorer(url)
        with tracer.start_as_current_span("rag app") as app:
            ranked = remote.rank(QUERY, DOCS, top_n=2)

            async def arank() -> object:
                return await remote.arank(QUERY, DOCS[:2])

            asyncio.run(arank())
        remote.close()
    assert len(ranked) == 2
    trace_id = app.get_span_context().trace_id
    served = [s for s in spans.get_finished_spans() if s.name.startswith("pixie.serve")]
    assert len(served) == 2  # one per request: the sync and the async call
    assert all(s.context.trace_id == trace_id for s in served)  # the server's spans joined the caller's trace


def test_no_trace_headers_without_a_current_span_or_opentelemetry() -> None:
    code = "from pixie_integrations.tracing import trace_headers; import sys; print(trace_headers(), 'opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{} False"
