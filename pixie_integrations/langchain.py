"""PIXIE reranking for LangChain: ``PixieRerank``, a drop-in for ``CohereRerank`` that runs locally.

    from pixie_integrations.langchain import PixieRerank

    reranker = PixieRerank(top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=vectorstore.as_retriever())

Needs the ``langchain`` extra (``pip install langchain-pixie`` once released; see :mod:`pixie_integrations.install`).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Literal

try:
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.load.serializable import to_json_not_implemented
    from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain_core
    from .install import install_hint

    raise ImportError(f"pixie_integrations.langchain needs langchain-core: {install_hint('langchain')}") from exc

import torch

from .chunking import LongDocuments, resolve_long_documents
from .protocols import Scorer, ascore_documents, score_documents, scorer_problem
from .ranking import CHUNK_METADATA_KEY, ChunkSpan
from .scorer import DEFAULT_MODEL, PixieScorer
from .tracing import PIXIE_SCORE_THRESHOLD, RerankSpan, TracedDocument, rerank_span

__all__ = ["DEFAULT_MODEL", "PixieRerank"]

logger = logging.getLogger(__name__)

# One lock for every instance: it only guards the first (lazy) scorer lookup, and a module-level lock keeps
# PixieRerank copyable and picklable.
_SCORER_LOCK = threading.Lock()
_RUN_NAME = "PixieRerank"


class _Unset:
    """Marker for "use the instance's setting" in :meth:`PixieRerank.rerank` (``None`` already means "no threshold")."""

    def __repr__(self) -> str:
        return "<instance setting>"


_UNSET = _Unset()

RerankDocument = str | Document | dict[str, Any]
"""What :meth:`PixieRerank.rerank` takes, as ``CohereRerank.rerank`` does: a text, a Document or an object."""


def _check_top_n(top_n: object) -> int | None:
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0:
        raise ValueError(f"top_n must be a positive int or None (None keeps every document), got {top_n!r}")
    return top_n


class PixieRerank(BaseDocumentCompressor):
    """Rerank documents with a PIXIE (or Qwen3-Reranker, or bge-style) cross-encoder running locally.

    A drop-in for ``CohereRerank``: the score lands in ``metadata["relevance_score"]``, the output is sorted best
    first, ``top_n`` defaults to 3 and :meth:`rerank` returns ``[{"index", "relevance_score"}]``. Every call opens a
    child run named ``PixieRerank`` under the callbacks it is given, so LangSmith and callback handlers see it.

    The scorer is created on first use (not at construction) and shares the loaded weights with every other
    ``PixieScorer`` for the same model, device and dtype, e.g. the LlamaIndex and Haystack adapters of this package.
    """

    model: str = DEFAULT_MODEL
    """Hugging Face Hub id or local folder of the reranker checkpoint."""
    top_n: int | None = 3
    """Number of documents to return, best first; None (or more than there are) returns all."""
    instruction: str | None = None
    """Task instruction of the prompt template; None uses the scorer's (the model card's web-search default)."""
    score_threshold: float | None = None
    """Drop documents scoring below this (applied before top_n); None keeps all."""
    scorer: Scorer | None = Field(default=None, repr=False)
    """An existing scorer to use and share (a PixieScorer, a RemoteScorer, any Scorer); None creates one for model."""
    device: str | torch.device | None = None
    """Device for a created scorer ("cuda", "cuda:1", "mps", "cpu"); None picks cuda, then mps, then cpu."""
    dtype: str | torch.dtype | None = None
    """Weight dtype for a created scorer ("float32", "bfloat16", "float16"); None picks per device."""
    max_length: int | None = None
    """Most tokens of one (query, document) input for a created scorer; None uses the model's limit."""
    long_documents: Literal["truncate", "chunk"] = "truncate"
    """Documents longer than max_length: "truncate" cuts their end; "chunk" scores chunks and keeps the best."""
    chunk_tokens: int | None = None
    """With "chunk": document tokens per chunk; None fills what max_length leaves after the template."""
    chunk_overlap: int | None = None
    """With "chunk": tokens each chunk repeats from the one before; None is 0."""
    max_chunks: int | None = None
    """With "chunk": most chunks scored per document (the rest are counted and logged); None: no limit."""
    aggregate: Literal["max", "first", "mean"] | None = None
    """With "chunk": the best chunk ("max", the default), the first, or the mean logit."""
    chunk_boundary: Literal["token", "sentence"] | None = None
    """With "chunk": cut at token boundaries ("token", the default) or at sentence ends ("sentence")."""

    # use_attribute_docstrings: the one-line docstrings above become the fields' descriptions (schema, IDE help).
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, use_attribute_docstrings=True)

    _scorer: PixieScorer | None = PrivateAttr(default=None)
    _long_documents: LongDocuments = PrivateAttr(default_factory=LongDocuments)
    _model_scorers: dict[str, PixieScorer] = PrivateAttr(default_factory=dict)

    @field_validator("model", mode="before")
    @classmethod
    def _model_path_to_str(cls, value: Any) -> Any:
        # A pathlib.Path to a local checkpoint is the natural thing to pass; pydantic would reject it as a str.
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("scorer", mode="before")
    @classmethod
    def _validate_scorer(cls, value: Any) -> Any:
        # Any object with the protocol's members (a ValueError, so pydantic reports it as the field's error).
        problem = None if value is None else scorer_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("top_n")
    @classmethod
    def _validate_top_n(cls, value: int | None) -> int | None:
        return _check_top_n(value)

    @field_validator("max_length")
    @classmethod
    def _validate_max_length(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"max_length must be positive or None, got {value}")
        return value

    @model_validator(mode="after")
    def _check_long_documents(self) -> PixieRerank:
        # One LongDocuments, checked now: a bad value or a chunk setting next to "truncate" fails at construction.
        self._long_documents = resolve_long_documents(self.long_documents, **self._chunk_fields())
        return self

    def _chunk_fields(self) -> dict[str, Any]:
        return {
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "max_chunks": self.max_chunks,
            "aggregate": self.aggregate,
            "chunk_boundary": self.chunk_boundary,
        }

    @model_validator(mode="after")
    def _reconcile_scorer(self) -> PixieRerank:
        if self.scorer is None:
            return self
        # Settings meant for building a scorer would be silently ignored next to a ready-made one: refuse them.
        ignored = [name for name in ("device", "dtype", "max_length") if getattr(self, name) is not None]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} only apply when PixieRerank creates its own scorer; "
                "set them on the scorer you pass as scorer= instead."
            )
        if "model" in self.model_fields_set and self.model != self.scorer.model_name:
            raise ValueError(f"model={self.model!r} does not match the given scorer's model {self.scorer.model_name!r}")
        # Keep `model` truthful (traces, repr) when only a scorer was given.
        self.model = self.scorer.model_name
        return self

    # -- the scorer ------------------------------------------------------------------------------------------------
    def get_scorer(self) -> Scorer:
        """The scorer behind this reranker (loading the model on first use): use it to score outside a chain.

        The one given as ``scorer=``, else the shared :class:`PixieScorer` for ``model``, ``device`` and ``dtype``.
        """
        return self._scorer_for(None)

    def _scorer_for(self, model: str | None) -> Scorer:
        """The scorer for a call's ``model`` (``None`` or the instance's: the instance's scorer)."""
        if model is None or model == self.model:
            if self.scorer is not None:
                return self.scorer
            if self._scorer is None:
                with _SCORER_LOCK:
                    if self._scorer is None:
                        logger.debug("PixieRerank: creating a scorer for %s", self.model)
                        # The core's registry hands back already-loaded weights for the same model/device/dtype.
                        self._scorer = self._new_scorer(self.model)
            return self._scorer
        if self.scorer is not None:
            raise ValueError(
                f"model={model!r}: this PixieRerank scores with the given scorer, which serves "
                f"{self.scorer.model_name!r}; make another PixieRerank with a scorer for {model!r}."
            )
        with _SCORER_LOCK:
            # Kept per instance, so that a model asked for per call is loaded once, not at every call.
            scorer = self._model_scorers.get(model)
            if scorer is None:
                logger.info("PixieRerank: loading %s for calls that ask for it", model)
                scorer = self._model_scorers[model] = self._new_scorer(model)
        return scorer

    def _new_scorer(self, model: str) -> PixieScorer:
        return PixieScorer(model, device=self.device, dtype=self.dtype, max_length=self.max_length)

    # -- public API ------------------------------------------------------------------------------------------------
    def rerank(
        self,
        documents: Sequence[RerankDocument],
        query: str,
        *,
        rank_fields: Sequence[str] | None = None,
        model: str | None = None,
        top_n: int | None = -1,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None | _Unset = _UNSET,
        callbacks: Callbacks = None,
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[dict[str, Any]]:
        """Score documents against the query and return the kept ones, best first (ties keep input order).

        The arguments up to ``max_tokens_per_doc`` are ``CohereRerank.rerank``'s, with its meanings.

        Args:
            documents: Texts, ``Document`` objects (their ``page_content`` is scored) or dicts (scored as YAML,
                ``key: value`` lines, as langchain-cohere renders them; non-ASCII text stays as it is).
            query: The search query.
            rank_fields: For dict documents, the keys to score, in this order (others are left out). ``None``: all.
            model: The checkpoint to score with for this call; ``None`` (or the instance's): the instance's scorer.
                Another one is loaded once, on the instance's device and dtype, and kept for later calls.
            top_n: How many to return: a positive int; ``None`` returns all; ``-1`` or any value <= 0 (Cohere's
                "not given") uses the instance's ``top_n``.
            max_tokens_per_doc: Cut each document to at most this many tokens before scoring (only the document's
                tokens count; the prompt template is never cut). ``None``: no cut beyond ``max_length``.
            instruction: Task instruction for this call; ``None`` uses the instance's, then the scorer's.
            score_threshold: Drop documents scoring below it; defaults to the instance's ``score_threshold``.
            callbacks: LangChain callbacks; the rerank is traced as a child run named ``PixieRerank``.
            long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary: This call's
                long-document settings (``None``: the instance's); see docs/long_documents.md.

        Returns:
            ``[{"index": position in documents, "relevance_score": float}, ...]``, as ``CohereRerank.rerank`` does;
            with chunking each result also has ``"pixie_chunk"``: the winning chunk's span
            (:meth:`~pixie_integrations.ChunkSpan.to_dict`).
        """
        n, instr, threshold = self._call_settings(top_n, instruction, score_threshold)
        chunking = self._chunking(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        if len(documents) == 0:
            return []  # nothing to score: no model load, no run
        manager = CallbackManager.configure(callbacks, local_metadata=self._run_metadata(n, threshold))
        run = manager.on_chain_start(
            to_json_not_implemented(self),
            {"query": query, "document_count": len(documents)},
            name=_RUN_NAME,
        )
        try:
            # The OpenInference span of this call, a child of the current one (the chain's, where an instrumentor
            # traces LangChain); the scorer's work is added to it rather than opening a second span.
            with rerank_span(_RUN_NAME, entry_point="langchain", parent=_instrumentor_span(run.run_id)) as span:
                _check_query(query)
                texts = _texts(documents, rank_fields)
                scorer = self._scorer_for(model)
                _trace_request(span, query, documents, texts, scorer, n, instr, threshold)
                scores, chunks = score_documents(
                    scorer,
                    query,
                    texts,
                    instruction=instr,
                    long_documents=chunking,
                    **_options(scorer, max_tokens_per_doc),
                )
                results = _select(scores, len(texts), n, threshold, chunks)
                _trace_results(span, texts, results, documents)
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        run.on_chain_end(_run_outputs(results))
        return results

    async def arerank(
        self,
        documents: Sequence[RerankDocument],
        query: str,
        *,
        rank_fields: Sequence[str] | None = None,
        model: str | None = None,
        top_n: int | None = -1,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None | _Unset = _UNSET,
        callbacks: Callbacks = None,
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[dict[str, Any]]:
        """Async :meth:`rerank`, the same arguments: the event loop stays free.

        A scorer with an ``ascore`` coroutine method is awaited; otherwise scoring runs in a worker thread. The
        first call's model load also runs in a worker thread.
        """
        n, instr, threshold = self._call_settings(top_n, instruction, score_threshold)
        chunking = self._chunking(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        if len(documents) == 0:
            return []
        manager = AsyncCallbackManager.configure(callbacks, local_metadata=self._run_metadata(n, threshold))
        run = await manager.on_chain_start(
            to_json_not_implemented(self),
            {"query": query, "document_count": len(documents)},
            name=_RUN_NAME,
        )
        try:
            with rerank_span(_RUN_NAME, entry_point="langchain", parent=_instrumentor_span(run.run_id)) as span:
                _check_query(query)
                texts = _texts(documents, rank_fields)
                scorer = await asyncio.to_thread(self._scorer_for, model)  # may load the model (seconds)
                _trace_request(span, query, documents, texts, scorer, n, instr, threshold)
                options = _options(scorer, max_tokens_per_doc)
                scores, chunks = await ascore_documents(
                    scorer, query, texts, instruction=instr, long_documents=chunking, **options
                )
                results = _select(scores, len(texts), n, threshold, chunks)
                _trace_results(span, texts, results, documents)
        except BaseException as exc:
            await run.on_chain_error(exc)
            raise
        await run.on_chain_end(_run_outputs(results))
        return results

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Rerank documents: copies of the kept ones, best first, each with ``metadata["relevance_score"]`` (and
        with chunking ``metadata["pixie_chunk"]``, the winning chunk's span in ``page_content``).

        The input documents are not modified, and the copies share no mutable metadata with them (nested values are
        copied too); their ``id`` and other metadata are kept.
        """
        results = self.rerank(documents, query, callbacks=callbacks)
        return _scored_copies(documents, results)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`."""
        results = await self.arerank(documents, query, callbacks=callbacks)
        return _scored_copies(documents, results)

    # -- internals -------------------------------------------------------------------------------------------------
    def _call_settings(
        self, top_n: int | None, instruction: str | None, score_threshold: float | None | _Unset
    ) -> tuple[int | None, str | None, float | None]:
        # An explicit argument wins even when falsy (never `x or self.x`): top_n=None and score_threshold=0.0 are
        # real requests. A top_n <= 0 is Cohere's "not given" (its default is -1): the instance's setting.
        if isinstance(top_n, int) and not isinstance(top_n, bool) and top_n <= 0:
            call_top_n = self.top_n
        else:
            call_top_n = _check_top_n(top_n)
        threshold = self.score_threshold if isinstance(score_threshold, _Unset) else score_threshold
        return call_top_n, instruction if instruction is not None else self.instruction, threshold

    def _chunking(
        self,
        long_documents: str | LongDocuments | None,
        chunk_tokens: int | None,
        chunk_overlap: int | None,
        max_chunks: int | None,
        aggregate: str | None,
        chunk_boundary: str | None,
    ) -> LongDocuments:
        """A call's long-document settings: each one given overrides the instance's (``None`` keeps it)."""
        return resolve_long_documents(
            long_documents,
            default=self._long_documents,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_chunks=max_chunks,
            aggregate=aggregate,
            chunk_boundary=chunk_boundary,
        )

    def _run_metadata(self, top_n: int | None, score_threshold: float | None) -> dict[str, Any]:
        return {"pixie_model": self.model, "top_n": top_n, "score_threshold": score_threshold}


def _check_query(query: object) -> None:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, not {type(query).__name__}")


def _texts(documents: Sequence[RerankDocument], rank_fields: Sequence[str] | None) -> list[str]:
    if rank_fields is not None and (isinstance(rank_fields, str) or not all(isinstance(f, str) for f in rank_fields)):
        raise TypeError(f"rank_fields must be a sequence of str or None, got {rank_fields!r}")
    return [_text_of(doc, i, rank_fields) for i, doc in enumerate(documents)]


def _text_of(doc: object, position: int, rank_fields: Sequence[str] | None) -> str:
    if isinstance(doc, Document):
        text = doc.page_content
        if not isinstance(text, str):
            raise TypeError(f"documents[{position}].page_content must be a str, not {type(text).__name__}")
        return text
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict):
        return _render_object(doc, rank_fields)
    raise TypeError(f"documents[{position}] must be a str, a langchain Document or a dict, not {type(doc).__name__}")


def _render_object(doc: dict[str, Any], rank_fields: Sequence[str] | None) -> str:
    """A dict document as langchain-cohere sends it to Cohere: the ``rank_fields`` keys (all when none are given,
    an empty one keeps all too, as there), in that order, dumped as YAML.

    Unlike there, non-ASCII text is kept as it is (``allow_unicode``): PyYAML's default writes Korean as
    ``\\uXXXX`` escapes, which the model would read as noise.
    """
    import yaml  # PyYAML: a dependency of langchain-core

    fields = {key: doc[key] for key in rank_fields if key in doc} if rank_fields else doc
    return yaml.dump(fields, sort_keys=False, allow_unicode=True)


def _options(scorer: Scorer, max_tokens_per_doc: int | None) -> dict[str, Any]:
    """The scorer keywords for Cohere's ``max_tokens_per_doc`` (none when it is not given)."""
    if max_tokens_per_doc is None:
        return {}
    if isinstance(max_tokens_per_doc, bool) or not isinstance(max_tokens_per_doc, int) or max_tokens_per_doc <= 0:
        raise ValueError(f"max_tokens_per_doc must be a positive int or None, got {max_tokens_per_doc!r}")
    parameters = inspect.signature(scorer.score).parameters
    takes = "max_doc_tokens" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    if not takes:
        raise TypeError(
            f"max_tokens_per_doc needs a scorer that can cut documents (score(..., max_doc_tokens=...)); "
            f"{type(scorer).__name__}.score has no max_doc_tokens."
        )
    return {"max_doc_tokens": max_tokens_per_doc}


def _select(
    scores: Sequence[float],
    count: int,
    top_n: int | None,
    score_threshold: float | None,
    chunks: Sequence[ChunkSpan | None] | None = None,
) -> list[dict[str, Any]]:
    if len(scores) != count:  # a scorer bug must not silently drop or misalign documents
        raise RuntimeError(f"The scorer returned {len(scores)} scores for {count} documents.")
    # sorted() is stable: equal scores keep their input order.
    order = sorted(range(count), key=lambda i: -scores[i])
    if score_threshold is not None:
        order = [i for i in order if scores[i] >= score_threshold]
    if top_n is not None:
        order = order[:top_n]
    results: list[dict[str, Any]] = [{"index": i, "relevance_score": float(scores[i])} for i in order]
    if chunks is not None:
        for result in results:
            chunk = chunks[result["index"]]
            if chunk is not None:
                result[CHUNK_METADATA_KEY] = chunk.to_dict()
    return results


def _scored_copies(documents: Sequence[Document], results: list[dict[str, Any]]) -> list[Document]:
    copies = []
    for result in results:
        doc = documents[result["index"]]
        # A deep copy of the metadata on a model_copy: the caller's Document and its nested values (lists, dicts)
        # stay untouched whatever is done to the output, `id` survives, and a stale relevance_score from an earlier
        # reranker is overwritten rather than kept.
        metadata = {**copy.deepcopy(doc.metadata), "relevance_score": result["relevance_score"]}
        if CHUNK_METADATA_KEY in result:  # chunked: where in the document the winning chunk lies
            metadata[CHUNK_METADATA_KEY] = dict(result[CHUNK_METADATA_KEY])
        copies.append(doc.model_copy(update={"metadata": metadata}))
    return copies


def _run_outputs(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scores": [r["relevance_score"] for r in results],
        "indices": [r["index"] for r in results],
    }


def _instrumentor_span(run_id: Any) -> Any:
    """The span OpenInference's LangChain instrumentor opened for this call's run, when it is active.

    It keeps its spans out of the OpenTelemetry context (callbacks may never detach one), so without this the
    rerank span would not nest under the run's span but under whatever is current, or start a trace of its own.
    """
    module = sys.modules.get("openinference.instrumentation.langchain")
    if module is None:
        return None
    try:
        instrumentor = module.LangChainInstrumentor()  # a singleton
        return instrumentor.get_span(run_id) if instrumentor.is_instrumented_by_opentelemetry else None
    except Exception:  # its internals may move: fall back to the current span
        logger.debug("Could not get the LangChain instrumentor's span", exc_info=True)
        return None


def _traced(doc: object, text: str, score: float | None = None) -> TracedDocument:
    """A document as the trace records it: the text that was scored, a Document's id and metadata."""
    if isinstance(doc, Document):
        return TracedDocument(text, id=doc.id, score=score, metadata=doc.metadata or None)
    return TracedDocument(text, score=score)


def _trace_request(
    span: RerankSpan,
    query: str,
    documents: Sequence[RerankDocument],
    texts: list[str],
    scorer: Scorer,
    top_n: int | None,
    instruction: str | None,
    threshold: float | None,
) -> None:
    if not span.recording:
        return
    span.request(
        query=query,
        model_name=scorer.model_name,
        top_k=top_n,
        instruction=instruction if instruction is not None else scorer.instruction,
        documents=[_traced(doc, text) for doc, text in zip(documents, texts)],
    )
    span.set(PIXIE_SCORE_THRESHOLD, threshold)


def _trace_results(
    span: RerankSpan, texts: list[str], results: list[dict[str, Any]], documents: Sequence[RerankDocument]
) -> None:
    if not span.recording:
        return
    span.result(
        (_traced(documents[r["index"]], texts[r["index"]], r["relevance_score"]) for r in results),
        indices=[r["index"] for r in results],
    )
