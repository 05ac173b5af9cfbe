"""OpenTelemetry spans of rerank calls, in OpenInference's ``RERANKER`` form (Phoenix, Arize, Langfuse and any OTLP
backend read them), with what only this project knows (pairs, tokens, batches, prefix reuse) under ``pixie.*``.

Every entry point (:class:`~pixie_integrations.PixieScorer`'s score/rank and their async twins, the LangChain,
LlamaIndex and Haystack adapters, the server) opens one span per rerank call with :func:`rerank_span`, a child of
the current span (the application's, Haystack's component span, the server's incoming ``traceparent``, or a span
an instrumentor keeps out of the context, given as ``parent``). A call made while such a span of this package is
open (an adapter calling its scorer, ``rank`` calling ``score``) opens no second span: its work (pairs, tokens,
batches, device) is added to the open one, which holds the documents. Where an instrumentor already opened a
RERANKER span for the call (``merge_into``), the work goes onto that one.

Only ``opentelemetry-api`` is used (the ``tracing`` extra), and only once the application has imported it: the
global tracer provider lives in ``opentelemetry.trace``, so while that module is not imported no provider can have
been set, nothing is imported here and a call costs a dictionary lookup. The provider is looked up at every call
(``opentelemetry.trace.get_tracer_provider()``, or :attr:`TraceConfig.tracer_provider`), so one set after this
package was imported is used. Without a configured SDK provider spans do not record and nothing is built.

Document text (the query, the instruction, the documents' content and metadata) is recorded only when the user
allows it: hidden by default, because reranked documents are often private and a trace backend is often shared.
OpenInference's settings allow or hide it: ``OPENINFERENCE_HIDE_INPUTS=false`` (or ``OPENINFERENCE_HIDE_INPUT_TEXT``)
records the query, the instruction and the input documents, ``OPENINFERENCE_HIDE_OUTPUTS=false`` (or
``..._OUTPUT_TEXT``) the output documents; ``true`` hides them; :func:`set_trace_config` in code wins over both.
The Haystack ranker follows Haystack's own switch (``HAYSTACK_CONTENT_TRACING_ENABLED``) where neither is set.
Hidden values read ``"__REDACTED__"``; ids, scores and counts stay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "REDACTED",
    "RerankSpan",
    "TraceConfig",
    "TracedDocument",
    "get_trace_config",
    "record_model",
    "rerank_span",
    "set_trace_config",
    "trace_headers",
]

logger = logging.getLogger(__name__)

# -- OpenInference's names (openinference-semantic-conventions, checked against it in tests/test_tracing.py) ------
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
RERANKER = "RERANKER"
INPUT_VALUE = "input.value"
RERANKER_QUERY = "reranker.query"
RERANKER_MODEL_NAME = "reranker.model_name"
RERANKER_TOP_K = "reranker.top_k"
RERANKER_INPUT_DOCUMENTS = "reranker.input_documents"
RERANKER_OUTPUT_DOCUMENTS = "reranker.output_documents"
DOCUMENT_ID = "document.id"
DOCUMENT_CONTENT = "document.content"
DOCUMENT_SCORE = "document.score"
DOCUMENT_METADATA = "document.metadata"
REDACTED = "__REDACTED__"
"""What a hidden value reads (OpenInference's placeholder: hidden on purpose, not missing)."""

HIDE_INPUTS = "OPENINFERENCE_HIDE_INPUTS"
HIDE_INPUT_TEXT = "OPENINFERENCE_HIDE_INPUT_TEXT"
HIDE_OUTPUTS = "OPENINFERENCE_HIDE_OUTPUTS"
HIDE_OUTPUT_TEXT = "OPENINFERENCE_HIDE_OUTPUT_TEXT"

# -- this project's own attributes --------------------------------------------------------------------------------
PIXIE_ENTRY_POINT = "pixie.entry_point"
"""Which API the call came through: ``scorer``, ``langchain``, ``llama_index``, ``haystack`` or ``server``."""
PIXIE_PAIRS = "pixie.pairs"
"""(query, document) pairs scored (after Haystack's duplicate collapsing)."""
PIXIE_TOKENS = "pixie.tokens"
"""Input tokens of those pairs, template included, after truncation."""
PIXIE_TRUNCATED = "pixie.truncated_documents"
"""Documents whose ends were cut to fit ``max_length``."""
PIXIE_BATCHES = "pixie.batches"
"""Forward passes that held pairs of this call (on the engine, shared with other callers' pairs)."""
PIXIE_SHARED_PREFIX_BATCHES = "pixie.shared_prefix_batches"
"""Of those, passes whose pairs shared one query prefix (run once, reused by every document)."""
PIXIE_PREFIX_RUNS = "pixie.prefix_runs"
"""Query prefixes encoded once into a key/value cache for this call (synchronous calls)."""
PIXIE_CHUNKS = "pixie.chunks"
"""With ``long_documents="chunk"``: chunk inputs scored (each a whole template input)."""
PIXIE_CHUNKS_DROPPED = "pixie.chunks_dropped"
"""With ``long_documents="chunk"``: chunks past ``max_chunks`` that were not scored."""
PIXIE_PREFIX_REUSE = "pixie.prefix_reuse"
PIXIE_PACKED = "pixie.packed"
PIXIE_DEVICE = "pixie.device"
PIXIE_DTYPE = "pixie.dtype"
PIXIE_FAMILY = "pixie.family"
PIXIE_MAX_LENGTH = "pixie.max_length"
PIXIE_ENGINE = "pixie.engine"
"""True when the pairs ran on the model's shared batching engine (async calls, the server)."""
PIXIE_QUEUED_SECONDS = "pixie.queued_seconds"
"""On the engine: seconds from acceptance to the request's first forward pass."""
PIXIE_RAW = "pixie.raw"
"""True when the scores are logits rather than probabilities."""
PIXIE_INSTRUCTION = "pixie.instruction"
"""The task instruction of the prompt (hidden with the inputs)."""
PIXIE_OUTPUT_INDICES = "pixie.output_indices"
"""Each output document's position among the input documents."""
PIXIE_SCORE_THRESHOLD = "pixie.score_threshold"

_TRACER_NAME = "pixie_integrations"


class TracedDocument(NamedTuple):
    """One document as a span records it (``None`` fields are left out)."""

    content: str | None
    id: str | int | None = None
    score: float | None = None
    metadata: Mapping[str, Any] | str | None = None


@dataclass(frozen=True)
class TraceConfig:
    """Tracing settings in code; they win over the environment, which wins over the defaults (OpenInference's order).

    Args:
        hide_inputs: Hide the query, the instruction and the input documents' content and metadata. ``None``: as
            ``OPENINFERENCE_HIDE_INPUTS`` / ``OPENINFERENCE_HIDE_INPUT_TEXT`` say (``false`` records them), else
            hidden (for the Haystack ranker: recorded while Haystack's content tracing is on).
        hide_outputs: Hide the output documents' content and metadata. ``None``: as ``OPENINFERENCE_HIDE_OUTPUTS`` /
            ``OPENINFERENCE_HIDE_OUTPUT_TEXT`` say, else hidden (Haystack as above).
        tracer_provider: The OpenTelemetry ``TracerProvider`` to use; ``None``: the global one, looked up per call.
        enabled: ``False`` emits no span at all.
    """

    hide_inputs: bool | None = None
    hide_outputs: bool | None = None
    tracer_provider: Any = None
    enabled: bool = True


_config = TraceConfig()


def set_trace_config(config: TraceConfig | None) -> None:
    """Use ``config`` for every span from now on (``None``: back to the environment and the defaults)."""
    global _config
    if config is not None and not isinstance(config, TraceConfig):
        raise TypeError(f"config must be a TraceConfig or None, not {type(config).__name__}")
    _config = config if config is not None else TraceConfig()


def get_trace_config() -> TraceConfig:
    """The settings in effect (those given to :func:`set_trace_config`, else the defaults)."""
    return _config


class RerankSpan:
    """The span of one rerank call, as its entry point fills it.

    This base class is the span that records nothing (no OpenTelemetry imported, no provider, sampled out, or
    tracing disabled): :attr:`recording` is ``False`` and every method returns at once, so a caller tests
    :attr:`recording` before building anything costly.
    """

    recording = False
    """Whether anything is recorded."""
    owner = False
    """Whether this call opened the span (``False``: it adds its work to an enclosing call's span)."""

    def request(
        self,
        *,
        query: str | None,
        model_name: str | None = None,
        top_k: int | None = None,
        instruction: str | None = None,
        documents: Iterable[TracedDocument] = (),
    ) -> None:
        """What was asked: the query, the model, how many to keep, the input documents (their retrieval scores)."""

    def result(self, documents: Iterable[TracedDocument], *, indices: Iterable[int] | None = None) -> None:
        """What came out: the output documents with their new scores, best first, and their input positions."""

    def work(
        self,
        *,
        pairs: int | None = None,
        tokens: int | None = None,
        truncated: int | None = None,
        batches: int | None = None,
        shared_prefix_batches: int | None = None,
        prefix_runs: int | None = None,
        queued_seconds: float | None = None,
        chunks: int | None = None,
        chunks_dropped: int | None = None,
    ) -> None:
        """What scoring cost, added up over the calls that report to this span (``None``: not known here)."""

    def model(
        self,
        *,
        device: str,
        dtype: str,
        family: str | None = None,
        packed: bool | None = None,
        prefix_reuse: bool | None = None,
        max_length: int | None = None,
        engine: bool = False,
        raw: bool | None = None,
    ) -> None:
        """Where and how the pairs ran."""

    def set(self, key: str, value: Any) -> None:
        """Another attribute (an OpenTelemetry value: str, bool, int, float or a list of one of them)."""


_NOT_RECORDING = RerankSpan()
_active: ContextVar[_RecordingSpan | None] = ContextVar("pixie_rerank_span", default=None)


class _RecordingSpan(RerankSpan):
    """Collects the call's attributes and writes them once, at its end, in an order that keeps the key ones.

    OpenTelemetry's SDK keeps at most ``OTEL_ATTRIBUTE_COUNT_LIMIT`` (128) attributes per span and evicts the
    oldest when more arrive; the per-document ones (four per document) are many, so they are written first and the
    span's kind, query, model and counts last.
    """

    recording = True
    owner = True

    def __init__(self, span: Any, *, hide_inputs: bool, hide_outputs: bool, foreign: bool = False) -> None:
        self._span = span
        self._foreign = foreign  # another instrumentor's span: it writes the OpenInference attributes itself
        self._hide_inputs = hide_inputs
        self._hide_outputs = hide_outputs
        self._inputs: list[TracedDocument] = []
        self._outputs: list[TracedDocument] = []
        self._attributes: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def request(
        self,
        *,
        query: str | None,
        model_name: str | None = None,
        top_k: int | None = None,
        instruction: str | None = None,
        documents: Iterable[TracedDocument] = (),
    ) -> None:
        attributes = self._attributes
        if query is not None:
            text = REDACTED if self._hide_inputs else query
            attributes[RERANKER_QUERY] = text
            attributes[INPUT_VALUE] = text  # what trace viewers show as the span's input
        if model_name is not None:
            attributes[RERANKER_MODEL_NAME] = model_name
        if top_k is not None:
            attributes[RERANKER_TOP_K] = top_k
        if instruction is not None:
            attributes[PIXIE_INSTRUCTION] = REDACTED if self._hide_inputs else instruction
        self._inputs = list(documents)

    def result(self, documents: Iterable[TracedDocument], *, indices: Iterable[int] | None = None) -> None:
        self._outputs = list(documents)
        if indices is not None:
            self._attributes[PIXIE_OUTPUT_INDICES] = list(indices)

    def work(
        self,
        *,
        pairs: int | None = None,
        tokens: int | None = None,
        truncated: int | None = None,
        batches: int | None = None,
        shared_prefix_batches: int | None = None,
        prefix_runs: int | None = None,
        queued_seconds: float | None = None,
        chunks: int | None = None,
        chunks_dropped: int | None = None,
    ) -> None:
        counts = self._counts
        for key, value in (
            (PIXIE_PAIRS, pairs),
            (PIXIE_TOKENS, tokens),
            (PIXIE_TRUNCATED, truncated),
            (PIXIE_BATCHES, batches),
            (PIXIE_SHARED_PREFIX_BATCHES, shared_prefix_batches),
            (PIXIE_PREFIX_RUNS, prefix_runs),
            (PIXIE_CHUNKS, chunks),
            (PIXIE_CHUNKS_DROPPED, chunks_dropped),
        ):
            if value is not None:
                counts[key] = counts.get(key, 0) + int(value)
        if queued_seconds is not None:
            self._attributes[PIXIE_QUEUED_SECONDS] = float(queued_seconds)

    def model(
        self,
        *,
        device: str,
        dtype: str,
        family: str | None = None,
        packed: bool | None = None,
        prefix_reuse: bool | None = None,
        max_length: int | None = None,
        engine: bool = False,
        raw: bool | None = None,
    ) -> None:
        values = {
            PIXIE_DEVICE: device,
            PIXIE_DTYPE: dtype,
            PIXIE_FAMILY: family,
            PIXIE_PACKED: packed,
            PIXIE_PREFIX_REUSE: prefix_reuse,
            PIXIE_MAX_LENGTH: max_length,
            PIXIE_ENGINE: engine,
            PIXIE_RAW: raw,
        }
        self._attributes.update({key: value for key, value in values.items() if value is not None})

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self._attributes[key] = value

    def finish(self) -> None:
        """Write everything to the span (the documents first: see the class docstring)."""
        out: dict[str, Any] = {}
        if self._foreign:  # only what the instrumentor cannot know
            out.update((k, v) for k, v in self._attributes.items() if k.startswith("pixie.") and k != PIXIE_INSTRUCTION)
            out.update(self._counts)
        else:
            _documents(out, RERANKER_INPUT_DOCUMENTS, self._inputs, hide=self._hide_inputs)
            _documents(out, RERANKER_OUTPUT_DOCUMENTS, self._outputs, hide=self._hide_outputs)
            out.update(self._attributes)
            out.update(self._counts)
            out[OPENINFERENCE_SPAN_KIND] = RERANKER
        try:
            self._span.set_attributes(out)
        except Exception:  # tracing must never fail a rerank
            logger.debug("Could not set the rerank span's attributes", exc_info=True)


class _NestedSpan(RerankSpan):
    """A call inside another call's span: its work and model go to that span; its request and result do not (the
    enclosing call, an adapter, holds the documents as its framework gave them)."""

    recording = True
    owner = False

    def __init__(self, outer: _RecordingSpan) -> None:
        self._outer = outer

    def work(self, **counts: Any) -> None:
        self._outer.work(**counts)

    def model(self, **values: Any) -> None:
        self._outer.model(**values)

    def set(self, key: str, value: Any) -> None:
        self._outer.set(key, value)


def _documents(out: dict[str, Any], prefix: str, documents: Sequence[TracedDocument], *, hide: bool) -> None:
    for i, doc in enumerate(documents):
        key = f"{prefix}.{i}."
        if doc.id is not None:
            out[key + DOCUMENT_ID] = doc.id if isinstance(doc.id, (str, int)) else str(doc.id)
        if doc.content is not None:
            out[key + DOCUMENT_CONTENT] = REDACTED if hide else doc.content
        if doc.score is not None:
            out[key + DOCUMENT_SCORE] = float(doc.score)
        if doc.metadata:
            out[key + DOCUMENT_METADATA] = REDACTED if hide else _json(doc.metadata)


def _json(metadata: Mapping[str, Any] | str) -> str:
    if isinstance(metadata, str):
        return metadata
    try:
        return json.dumps(metadata, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # circular or unsortable: still say something
        return str(metadata)


_warned_env: set[str] = set()


def _env_flag(name: str) -> bool | None:
    """An OpenInference boolean variable: ``true``/``false`` in any case; unset (or anything else, which warns once)
    is ``None``."""
    value = os.environ.get(name)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if name not in _warned_env:
        _warned_env.add(name)
        logger.warning("%s=%r is neither true nor false; ignoring it.", name, value)
    return None


def _hidden(configured: bool | None, names: tuple[str, str], default: bool) -> bool:
    """Code's setting, else the environment's (either variable ``true`` hides; ``false`` allows), else the default."""
    if configured is not None:
        return configured
    flags = [_env_flag(name) for name in names]
    if True in flags:
        return True
    if False in flags:
        return False
    return default


_provider_by_env: bool | None = None


def record_model(span: RerankSpan, scorer: Any, settings: Any, *, engine: bool, raw: bool) -> None:
    """Record where and how ``scorer``'s pairs ran (its device, dtype, family and ``max_length``; ``settings``'
    packing and prefix reuse: the scorer's own, or its engine's)."""
    span.model(
        device=str(scorer.device),
        dtype=str(scorer.dtype).removeprefix("torch."),
        family=scorer.family.value,
        packed=settings.pack,
        prefix_reuse=settings.reuse_prefix,
        max_length=scorer.max_length,
        engine=engine,
        raw=raw,
    )


def trace_headers() -> dict[str, str]:
    """The W3C trace context of the current span as HTTP headers (``traceparent``, through the application's
    propagators), for a client to send so that a server's spans join the caller's trace; ``{}`` when the
    application has not imported OpenTelemetry or no span is current."""
    if _trace_api() is None or not _config.enabled:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _trace_api() -> Any:
    """``opentelemetry.trace`` if the application imported it (or named a provider by environment variable)."""
    global _provider_by_env
    module = sys.modules.get("opentelemetry.trace")
    if module is not None:
        return module
    if _provider_by_env is None:  # read once: it is set before the process starts
        _provider_by_env = bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))
    if not _provider_by_env:
        return None
    try:
        import opentelemetry.trace as module  # the provider named by the variable loads on first use
    except ImportError:
        return None
    return module


class _Given:
    """A context manager that hands out a span made beforehand (the cheap paths of :func:`rerank_span`)."""

    __slots__ = ("_span",)

    def __init__(self, span: RerankSpan) -> None:
        self._span = span

    def __enter__(self) -> RerankSpan:
        return self._span

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Given(_NOT_RECORDING)


def rerank_span(
    name: str,
    *,
    entry_point: str,
    kind: str = "INTERNAL",
    carrier: Mapping[str, str] | None = None,
    parent: Any = None,
    merge_into: Any = None,
    hide_by_default: bool = True,
) -> contextlib.AbstractContextManager[RerankSpan]:
    """Open the ``RERANKER`` span of one rerank call as the current span; yields a :class:`RerankSpan` to fill.

    Inside another call's span (an adapter's, when it calls its scorer) no span is opened: the yielded object adds
    its work to the enclosing span and ignores its own request and result.

    Args:
        name: The span's name (the API that was called, e.g. ``"PixieScorer.rank"``).
        entry_point: Recorded as ``pixie.entry_point``.
        kind: The OpenTelemetry span kind's name (``"SERVER"`` for a request from the network).
        carrier: Headers to take the parent from (W3C ``traceparent``, through the application's propagators: the
            server's request headers); ``None``, or headers without one: the current span is the parent. Where a
            span is already current (an HTTP instrumentation's, which took the headers' parent), it is the parent
            and the span's kind is ``INTERNAL``.
        parent: An OpenTelemetry span to be the parent instead of the current one (a framework instrumentor's span
            that it keeps out of the context).
        merge_into: A recording ``RERANKER`` span another instrumentor opened for this very call (OpenInference's
            LlamaIndex instrumentor, from the framework's rerank events): no span is opened; the ``pixie.*``
            attributes are added to that one, which already holds the query and documents.
        hide_by_default: Hide inputs and outputs unless the code's :class:`TraceConfig` or the environment allows
            them (``False``: a framework whose own setting already allowed content in traces: Haystack's content
            tracing).
    """
    outer = _active.get()
    if outer is not None:
        return _Given(_NestedSpan(outer))
    config = _config
    api = _trace_api() if config.enabled else None
    if api is None:
        return _NOTHING
    provider = config.tracer_provider
    if provider is None:
        provider = api.get_tracer_provider()
        if isinstance(provider, api.ProxyTracerProvider):  # the global one is not set yet: nothing would record
            return _NOTHING
    if merge_into is not None:
        return _merged(merge_into, entry_point)
    return _recording(api, provider, name, entry_point, kind, carrier, parent, hide_by_default, config)


@contextlib.contextmanager
def _merged(span: Any, entry_point: str) -> Iterator[RerankSpan]:
    recorder = _RecordingSpan(span, hide_inputs=True, hide_outputs=True, foreign=True)
    recorder.set(PIXIE_ENTRY_POINT, entry_point)
    token = _active.set(recorder)
    try:
        yield recorder
    finally:
        _active.reset(token)
        recorder.finish()


@contextlib.contextmanager
def _recording(
    api: Any,
    provider: Any,
    name: str,
    entry_point: str,
    kind: str,
    carrier: Mapping[str, str] | None,
    parent: Any,
    hide_by_default: bool,
    config: TraceConfig,
) -> Iterator[RerankSpan]:
    try:
        context = None
        if parent is not None:
            context = api.set_span_in_context(parent)
        elif carrier is not None:
            if api.get_current_span().get_span_context().is_valid:
                # An HTTP instrumentation's span is current (it took the headers' parent already): be its child.
                kind = "INTERNAL"
            else:
                from opentelemetry import propagate

                context = propagate.extract(carrier)  # the current context where the headers carry no parent
        tracer = _tracer(provider)
        span = tracer.start_span(name, context=context, kind=getattr(api.SpanKind, kind))
    except Exception:  # a broken tracer setup must not fail a rerank
        logger.debug("Could not start a rerank span", exc_info=True)
        yield _NOT_RECORDING
        return
    if not span.is_recording():
        span.end()
        yield _NOT_RECORDING
        return
    hide_inputs = _hidden(config.hide_inputs, (HIDE_INPUTS, HIDE_INPUT_TEXT), hide_by_default)
    hide_outputs = _hidden(config.hide_outputs, (HIDE_OUTPUTS, HIDE_OUTPUT_TEXT), hide_by_default)
    recorder = _RecordingSpan(span, hide_inputs=hide_inputs, hide_outputs=hide_outputs)
    recorder.set(PIXIE_ENTRY_POINT, entry_point)
    token = _active.set(recorder)
    try:
        # end_on_exit=False: the attributes are written just before the span ends, below.
        with api.use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
            yield recorder
    finally:
        _active.reset(token)
        recorder.finish()
        span.end()


_tracers: dict[int, tuple[Any, Any]] = {}


def _tracer(provider: Any) -> Any:
    """This package's tracer from ``provider`` (kept per provider: SDK providers build a new one per call)."""
    entry = _tracers.get(id(provider))
    if entry is not None and entry[0] is provider:
        return entry[1]
    from . import __version__

    tracer = provider.get_tracer(_TRACER_NAME, __version__)
    if len(_tracers) > 8:  # providers come and go in tests; keep the few in use
        _tracers.clear()
    _tracers[id(provider)] = (provider, tracer)
    return tracer
