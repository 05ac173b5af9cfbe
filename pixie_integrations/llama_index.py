"""PIXIE reranking as a LlamaIndex node postprocessor.

``PixieRerank`` drops in where ``SentenceTransformerRerank`` or ``CohereRerank`` go today::

    from pixie_integrations.llama_index import PixieRerank

    query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[PixieRerank(top_n=3)])

Scores come from the shared :class:`~pixie_integrations.PixieScorer`, so they equal ``PixieScorer.score`` on the same
text, and every adapter asking for the same checkpoint shares one copy of the weights.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Literal

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    from .install import install_hint

    raise ImportError(f"pixie_integrations.llama_index needs LlamaIndex: {install_hint('llama-index')}") from exc

import torch

from .chunking import LongDocuments, resolve_long_documents
from .loading import resolve_dtype
from .protocols import Scorer, ascore_documents, score_documents, scorer_problem
from .ranking import CHUNK_METADATA_KEY, ChunkSpan
from .scorer import DEFAULT_MODEL, PixieScorer
from .tracing import RerankSpan, TracedDocument, rerank_span

__all__ = ["CHUNK_METADATA_KEY", "RETRIEVAL_SCORE_KEY", "PixieRerank"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key that holds the first-stage score when ``keep_retrieval_score=True`` (the built-ins' key)."""

_DEFAULT_TOP_N = 2
_SPAN_NAME = "PixieRerank"
# The reference's cross_encoder_kwargs (llama-index-postprocessor-sbert-rerank) that mean something here.
_CROSS_ENCODER_KWARGS = ("max_length", "trust_remote_code")


class _ScorerSlot:
    """Holds the lazily loaded scorer and the settings it was loaded for.

    Copies and pickles of a slot drop a local ``PixieScorer``: LlamaIndex's ``__getstate__`` test-pickles every
    private attribute, which would serialize the whole model (then fail on its locks). A copy reloads on first use,
    through the core's registry, so within one process that costs nothing. Any other scorer (a ``RemoteScorer``,
    whose copies just reconnect) is kept: reloading it from ``model`` would silently swap in a local model.
    """

    __slots__ = ("_entry", "lock")

    def __init__(self, entry: tuple[tuple[Any, ...], Scorer] | None = None) -> None:
        self._entry = entry
        self.lock = threading.Lock()

    def get(self, settings: tuple[Any, ...]) -> Scorer | None:
        entry = self._entry
        return entry[1] if entry is not None and entry[0] == settings else None

    def put(self, settings: tuple[Any, ...], scorer: Scorer) -> None:
        self._entry = (settings, scorer)

    def __reduce__(self) -> tuple[Any, ...]:
        entry = self._entry
        if entry is not None and not isinstance(entry[1], PixieScorer):
            return (_ScorerSlot, (entry,))
        return (_ScorerSlot, ())


class PixieRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a PIXIE-Spell-Reranker (or any checkpoint :class:`PixieScorer` loads).

    Each node's text, ``node.node.get_content(metadata_mode=metadata_mode)``, is scored against the query; the result
    is a new list of new ``NodeWithScore`` objects, best first, holding the relevance probability as a Python float.
    The caller's nodes are never modified (``SentenceTransformerRerank`` sets the score on the caller's objects).

    The first arguments are ``SentenceTransformerRerank``'s, in its order: ``PixieRerank(3, "model")`` works, and
    so does ``PixieRerank.from_dict(saved)`` of its saved config.

    Args:
        top_n: How many nodes to return (fewer if fewer come in). Must be positive.
        model: Hugging Face Hub id or local folder of the reranker. ``None``: the scorer's model if ``scorer`` is
            given, else ``DEFAULT_MODEL``.
        device: Where to run the model (``"cuda"``, ``"cpu"``, ...); ``None`` picks the best available.
        keep_retrieval_score: Keep the first-stage score in ``metadata["retrieval_score"]`` of a copied node.
        trust_remote_code: Allow checkpoints that ship their own modelling code (some encoder rerankers need it).
        instruction: Task instruction of the prompt template; ``None`` uses the scorer's (the model card's default).
        metadata_mode: Which metadata goes into the scored text (the built-in rerankers use ``EMBED``).
        dtype: Weight dtype (``"float32"``, ``"bfloat16"``, ...); ``None`` picks one for the device.
        max_length: Most tokens of one (query, document) input; ``None`` uses the model's limit.
        scorer: An existing scorer to share: a :class:`PixieScorer`, a
            :class:`~pixie_integrations.serving.RemoteScorer`, any :class:`~pixie_integrations.Scorer` (then leave
            ``device``, ``dtype`` and ``max_length`` unset: the scorer already fixes them). Without it one is created
            on first use, sharing the weights of any other scorer of the same model, device and dtype.
        callback_manager: LlamaIndex callback manager (query engines set their own).
        cross_encoder_kwargs: The newer ``SentenceTransformerRerank``'s CrossEncoder options, so that its saved
            configs load: ``max_length`` and ``trust_remote_code`` are taken as those settings; others are refused.
        long_documents: ``"truncate"`` (the default) cuts a document longer than ``max_length``; ``"chunk"`` scores
            it in chunks and keeps the best (docs/long_documents.md). The winning chunk's span goes into a copied
            node's ``metadata["pixie_chunk"]`` (left out of the embed and LLM text).
        chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary: The chunking settings, as
            :meth:`PixieScorer.score` takes them (``None``: its defaults); only with ``long_documents="chunk"``.
    """

    # LlamaIndex components silently drop unknown arguments; a typo such as ``top_k=`` must fail instead.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    model: str = Field(default=DEFAULT_MODEL, description="Hugging Face Hub id or local folder of the reranker.")
    top_n: int = Field(default=_DEFAULT_TOP_N, gt=0, strict=True, description="Number of nodes to return, best first.")
    instruction: str | None = Field(
        default=None,
        description="Task instruction of the prompt template; None uses the scorer's default instruction.",
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Keep the first-stage score in metadata['retrieval_score'] (excluded from embed and LLM text).",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which node metadata is part of the text that is scored."
    )
    device: str | None = Field(
        default=None, description="Device for the model ('cuda', 'cuda:1', 'mps', 'cpu'); None picks the best."
    )
    dtype: str | None = Field(
        default=None, description="Weight dtype ('float32', 'bfloat16', 'float16'); None picks one for the device."
    )
    max_length: int | None = Field(
        default=None, gt=0, description="Most tokens of one (query, document) input; None uses the model's limit."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow checkpoints that ship their own modelling code (some encoder rerankers)."
    )
    long_documents: Literal["truncate", "chunk"] = Field(
        default="truncate",
        description="Documents longer than max_length: 'truncate' cuts their end; 'chunk' scores chunks, keeps the best.",
    )
    chunk_tokens: int | None = Field(
        default=None, description="With 'chunk': document tokens per chunk; None fills what max_length leaves."
    )
    chunk_overlap: int | None = Field(
        default=None, description="With 'chunk': tokens each chunk repeats from the one before; None is 0."
    )
    max_chunks: int | None = Field(
        default=None, description="With 'chunk': most chunks scored per document (the rest counted, logged)."
    )
    aggregate: Literal["max", "first", "mean"] | None = Field(
        default=None, description="With 'chunk': the best chunk ('max', the default), the first, or the mean logit."
    )
    chunk_boundary: Literal["token", "sentence"] | None = Field(
        default=None, description="With 'chunk': cut at token boundaries ('token', the default) or sentence ends."
    )

    _slot: _ScorerSlot = PrivateAttr(default_factory=_ScorerSlot)

    def __init__(
        self,
        top_n: int = _DEFAULT_TOP_N,
        model: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        keep_retrieval_score: bool = False,
        trust_remote_code: bool = False,
        *,
        instruction: str | None = None,
        metadata_mode: MetadataMode | str = MetadataMode.EMBED,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        scorer: Scorer | None = None,
        callback_manager: CallbackManager | None = None,
        cross_encoder_kwargs: dict[str, Any] | None = None,
        long_documents: str = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> None:
        if isinstance(top_n, (str, os.PathLike)):
            # A ValueError, as pydantic raises for every other bad top_n.
            raise ValueError(  # noqa: TRY004
                f"top_n must be an int, got {top_n!r}: like llama_index.core's SentenceTransformerRerank, PixieRerank "
                "takes (top_n, model, ...) positionally; pass model=... by keyword."
            )
        if cross_encoder_kwargs:
            unknown = sorted(set(cross_encoder_kwargs) - set(_CROSS_ENCODER_KWARGS))
            if unknown:
                raise ValueError(
                    f"cross_encoder_kwargs {unknown} have no meaning here; only {list(_CROSS_ENCODER_KWARGS)} are "
                    "taken (as max_length= and trust_remote_code=)."
                )
            max_length = cross_encoder_kwargs.get("max_length", max_length)
            trust_remote_code = cross_encoder_kwargs.get("trust_remote_code", trust_remote_code)
        if scorer is not None:
            problem = scorer_problem(scorer)
            if problem is not None:
                raise TypeError(problem)
            settings = {"device": device, "dtype": dtype, "max_length": max_length}
            given = [name for name, value in settings.items() if value is not None]
            if trust_remote_code:
                given.append("trust_remote_code")
            if given:
                # They would be silently ignored: the scorer's model is already loaded with its own settings.
                raise ValueError(f"Pass either scorer or {', '.join(given)}, not both: configure the scorer instead.")
            if model is None:
                model = scorer.model_name
            elif not _same_model(model, scorer.model_name):
                raise ValueError(f"model={os.fspath(model)!r} differs from the scorer's model {scorer.model_name!r}.")
        kwargs: dict[str, Any] = {}
        if callback_manager is not None:
            kwargs["callback_manager"] = callback_manager
        super().__init__(
            model=os.fspath(model) if model is not None else DEFAULT_MODEL,
            top_n=top_n,
            instruction=instruction,
            keep_retrieval_score=keep_retrieval_score,
            metadata_mode=metadata_mode,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            long_documents=long_documents,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_chunks=max_chunks,
            aggregate=aggregate,
            chunk_boundary=chunk_boundary,
            **kwargs,
        )
        if scorer is not None:
            self._slot.put(self._settings(), scorer)

    @classmethod
    def class_name(cls) -> str:
        return "PixieRerank"

    # -- validation ------------------------------------------------------------------------------------------------
    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        if value is None:
            return None
        # Fail at construction, not at the first query, and store a plain str so that to_dict/to_json work.
        try:
            return str(torch.device(value))
        except (RuntimeError, TypeError) as exc:  # pydantic reports only ValueError as a validation error
            raise ValueError(f"Invalid device {value!r}: {exc}") from exc

    @field_validator("dtype", mode="before")
    @classmethod
    def _check_dtype(cls, value: Any) -> Any:
        if value is None:
            return None
        return str(resolve_dtype(value, torch.device("cpu"))).removeprefix("torch.")

    @model_validator(mode="after")
    def _check_long_documents(self) -> PixieRerank:
        self.long_document_settings  # noqa: B018 - a bad combination fails at construction (and on assignment)
        return self

    @property
    def long_document_settings(self) -> LongDocuments:
        """The long-document fields as one :class:`~pixie_integrations.LongDocuments`."""
        return resolve_long_documents(
            self.long_documents,
            chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap,
            max_chunks=self.max_chunks,
            aggregate=self.aggregate,
            chunk_boundary=self.chunk_boundary,
        )

    # -- the scorer ------------------------------------------------------------------------------------------------
    @property
    def scorer(self) -> Scorer:
        """The scorer behind this reranker: the one given, else a :class:`PixieScorer` loaded on first access."""
        return self.get_scorer()

    def get_scorer(self) -> Scorer:
        """The scorer behind this reranker (loading the model on first use): use it to score outside a query engine.

        The one given as ``scorer=``, else the shared :class:`PixieScorer` for ``model``, ``device``, ``dtype``.
        """
        settings = self._settings()
        scorer = self._slot.get(settings)
        if scorer is None:
            with self._slot.lock:  # one load even when the first queries arrive together
                scorer = self._slot.get(settings)
                if scorer is None:
                    logger.info("Loading reranker %s", self.model)
                    scorer = PixieScorer(
                        self.model,
                        device=self.device,
                        dtype=self.dtype,
                        max_length=self.max_length,
                        trust_remote_code=self.trust_remote_code,
                    )
                    self._slot.put(settings, scorer)
        return scorer

    def _settings(self) -> tuple[str, str | None, str | None, int | None, bool]:
        # A scorer serves only the settings it was made for: model_copy(update=...) or assigning a field reloads.
        return (self.model, self.device, self.dtype, self.max_length, self.trust_remote_code)

    # -- postprocessing --------------------------------------------------------------------------------------------
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = _require_query(query_bundle)
        if not nodes:
            return []
        texts = self._texts(nodes)
        scorer = self.get_scorer()
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model))
        with (
            self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event,
            # The OpenInference span, a child of the current one (the query engine's, under an instrumentor); the
            # scorer's work is added to it rather than opening a second span.
            rerank_span(_SPAN_NAME, entry_point="llama_index", merge_into=_instrumentor_span()) as span,
        ):
            self._trace_request(span, query, nodes, texts, scorer)
            scores, chunks = score_documents(
                scorer, query, texts, instruction=self.instruction, long_documents=self.long_document_settings
            )
            reranked = self._rerank(nodes, scores, chunks)
            _trace_result(span, nodes, texts, scores, self.top_n)
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = _require_query(query_bundle)
        if not nodes:
            return []
        texts = self._texts(nodes)
        # Loading blocks: do it in a worker thread so the event loop keeps serving.
        scorer = self._slot.get(self._settings())
        if scorer is None:
            scorer = await asyncio.to_thread(self.get_scorer)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model))
        with (
            self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event,
            rerank_span(_SPAN_NAME, entry_point="llama_index", merge_into=_instrumentor_span()) as span,
        ):
            self._trace_request(span, query, nodes, texts, scorer)
            # An async scorer (ascore, arank) is awaited; a sync one runs in a worker thread.
            scores, chunks = await ascore_documents(
                scorer, query, texts, instruction=self.instruction, long_documents=self.long_document_settings
            )
            reranked = self._rerank(nodes, scores, chunks)
            _trace_result(span, nodes, texts, scores, self.top_n)
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    def _trace_request(
        self, span: RerankSpan, query: str, nodes: Sequence[NodeWithScore], texts: list[str], scorer: Scorer
    ) -> None:
        if not span.recording:
            return
        span.request(
            query=query,
            model_name=self.model,
            top_k=self.top_n,
            instruction=self.instruction if self.instruction is not None else scorer.instruction,
            # The text that was scored (with the metadata of metadata_mode), and the first-stage score.
            documents=[
                TracedDocument(text, id=n.node.node_id, score=n.score, metadata=n.node.metadata or None)
                for n, text in zip(nodes, texts)
            ],
        )

    def _texts(self, nodes: Sequence[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _payload(self, nodes: list[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    def _rerank(
        self,
        nodes: Sequence[NodeWithScore],
        scores: Sequence[float],
        chunks: Sequence[ChunkSpan | None] | None = None,
    ) -> list[NodeWithScore]:
        if len(scores) != len(nodes):  # a scorer bug must not silently drop or misalign nodes
            raise RuntimeError(f"The scorer returned {len(scores)} scores for {len(nodes)} nodes.")
        return [
            _rescored(
                nodes[i],
                float(scores[i]),
                keep_retrieval_score=self.keep_retrieval_score,
                chunk=chunks[i] if chunks is not None else None,
            )
            for i in _rank_order(scores)[: self.top_n]
        ]


def _trace_result(
    span: RerankSpan, nodes: Sequence[NodeWithScore], texts: list[str], scores: Sequence[float], top_n: int
) -> None:
    if not span.recording:
        return
    order = _rank_order(scores)[:top_n]  # the order _rerank kept
    span.result(
        (
            TracedDocument(
                texts[i], id=nodes[i].node.node_id, score=float(scores[i]), metadata=nodes[i].node.metadata or None
            )
            for i in order
        ),
        indices=order,
    )


def _instrumentor_span() -> Any:
    """The span OpenInference's LlamaIndex instrumentor opened for this call, when it is active.

    It makes a RERANKER span of the dispatcher span around ``postprocess_nodes`` (from ``ReRankStartEvent``), and
    keeps it out of the OpenTelemetry context. The rerank's ``pixie.*`` attributes go onto that span rather than a
    second RERANKER span inside it.
    """
    module = sys.modules.get("openinference.instrumentation.llama_index")
    if module is None:
        return None
    try:
        span = module.get_current_span()
    except Exception:  # its internals may move: fall back to a span of our own
        logger.debug("Could not get the LlamaIndex instrumentor's span", exc_info=True)
        return None
    return span if span is not None and span.is_recording() else None


def _require_query(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ValueError("PixieRerank needs a query: pass query_bundle=QueryBundle(...) or query_str=... .")
    return query_bundle.query_str


def _rank_order(scores: Sequence[float]) -> list[int]:
    """Indices by descending score; ties keep input order; NaN last.

    A plain ``-score`` key: the built-ins' ``-x.score if x.score else 0`` ranks a 0 above every negative logit.
    """
    return sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i]))


def _rescored(
    item: NodeWithScore, score: float, *, keep_retrieval_score: bool, chunk: ChunkSpan | None = None
) -> NodeWithScore:
    """A new ``NodeWithScore``; the inner node is shared unless metadata must change, then it is copied."""
    node = item.node
    added: dict[str, Any] = {}
    if keep_retrieval_score:
        added[RETRIEVAL_SCORE_KEY] = item.score
    if chunk is not None:
        added[CHUNK_METADATA_KEY] = chunk.to_dict()
    if added:
        # Copy metadata (deeply: nested values too) and the exclusion lists: model_copy is shallow, and the caller's
        # node must not change.
        # Excluding the keys keeps "retrieval_score: 0.83" out of the text later embedded or shown to the LLM.
        node = node.model_copy(
            update={
                "metadata": {**copy.deepcopy(node.metadata), **added},
                "excluded_embed_metadata_keys": _with_keys(node.excluded_embed_metadata_keys, added),
                "excluded_llm_metadata_keys": _with_keys(node.excluded_llm_metadata_keys, added),
            }
        )
    return NodeWithScore(node=node, score=score)


def _with_keys(keys: list[str], added: dict[str, Any]) -> list[str]:
    return [*keys, *(key for key in added if key not in keys)]


def _same_model(a: str | os.PathLike[str], b: str) -> bool:
    def norm(x: str | os.PathLike[str]) -> str:
        return os.path.normpath(os.path.expanduser(os.fspath(x)))

    return norm(a) == norm(b)
