"""PIXIE reranking for LangChain: ``PixieRerank``, a drop-in for ``CohereRerank`` that runs locally.

    from pixie_integrations.langchain import PixieRerank

    reranker = PixieRerank(top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=vectorstore.as_retriever())

Needs ``pip install "pixie-integrations[langchain]"``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.load.serializable import to_json_not_implemented
    from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain_core
    raise ImportError(
        'pixie_integrations.langchain needs langchain-core: pip install "pixie-integrations[langchain]"'
    ) from exc

import torch

from .protocols import Scorer
from .scorer import DEFAULT_MODEL, PixieScorer

__all__ = ["DEFAULT_MODEL", "PixieRerank"]

logger = logging.getLogger(__name__)

# One lock for every instance: it only guards the first (lazy) scorer lookup, and a module-level lock keeps
# PixieRerank copyable and picklable.
_SCORER_LOCK = threading.Lock()
_RUN_NAME = "PixieRerank"


class _Unset:
    """Marker for "use the instance's setting" in :meth:`PixieRerank.rerank` (``None`` already means "all")."""

    def __repr__(self) -> str:
        return "<instance setting>"


_UNSET = _Unset()


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

    # use_attribute_docstrings: the one-line docstrings above become the fields' descriptions (schema, IDE help).
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, use_attribute_docstrings=True)

    _scorer: PixieScorer | None = PrivateAttr(default=None)

    @field_validator("model", mode="before")
    @classmethod
    def _model_path_to_str(cls, value: Any) -> Any:
        # A pathlib.Path to a local checkpoint is the natural thing to pass; pydantic would reject it as a str.
        return os.fspath(value) if isinstance(value, os.PathLike) else value

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
    def _get_scorer(self) -> Scorer:
        if self.scorer is not None:
            return self.scorer
        if self._scorer is None:
            with _SCORER_LOCK:
                if self._scorer is None:
                    logger.debug("PixieRerank: creating a scorer for %s", self.model)
                    # The core's registry hands back already-loaded weights for the same model/device/dtype.
                    self._scorer = PixieScorer(
                        self.model, device=self.device, dtype=self.dtype, max_length=self.max_length
                    )
        return self._scorer

    # -- public API ------------------------------------------------------------------------------------------------
    def rerank(
        self,
        documents: Sequence[str | Document],
        query: str,
        *,
        top_n: int | None | _Unset = _UNSET,
        instruction: str | None = None,
        score_threshold: float | None | _Unset = _UNSET,
        callbacks: Callbacks = None,
    ) -> list[dict[str, Any]]:
        """Score documents against the query and return the kept ones, best first (ties keep input order).

        Args:
            documents: Texts or ``Document`` objects (their ``page_content`` is scored).
            query: The search query.
            top_n: How many to return; ``None`` returns all. Defaults to the instance's ``top_n``.
            instruction: Task instruction for this call; ``None`` uses the instance's, then the scorer's.
            score_threshold: Drop documents scoring below it; defaults to the instance's ``score_threshold``.
            callbacks: LangChain callbacks; the rerank is traced as a child run named ``PixieRerank``.

        Returns:
            ``[{"index": position in documents, "relevance_score": float}, ...]``, as ``CohereRerank.rerank`` does.
        """
        n, instr, threshold = self._call_settings(top_n, instruction, score_threshold)
        if len(documents) == 0:
            return []  # nothing to score: no model load, no run
        manager = CallbackManager.configure(callbacks, local_metadata=self._run_metadata(n, threshold))
        run = manager.on_chain_start(
            to_json_not_implemented(self),
            {"query": query, "document_count": len(documents)},
            name=_RUN_NAME,
        )
        try:
            results = self._rank(documents, query, n, instr, threshold)
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        run.on_chain_end(_run_outputs(results))
        return results

    async def arerank(
        self,
        documents: Sequence[str | Document],
        query: str,
        *,
        top_n: int | None | _Unset = _UNSET,
        instruction: str | None = None,
        score_threshold: float | None | _Unset = _UNSET,
        callbacks: Callbacks = None,
    ) -> list[dict[str, Any]]:
        """Async :meth:`rerank`: loading and scoring run in a worker thread, so the event loop stays free."""
        n, instr, threshold = self._call_settings(top_n, instruction, score_threshold)
        if len(documents) == 0:
            return []
        manager = AsyncCallbackManager.configure(callbacks, local_metadata=self._run_metadata(n, threshold))
        run = await manager.on_chain_start(
            to_json_not_implemented(self),
            {"query": query, "document_count": len(documents)},
            name=_RUN_NAME,
        )
        try:
            # The first call also loads the model (seconds): both happen off the event loop.
            results = await asyncio.to_thread(self._rank, documents, query, n, instr, threshold)
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
        """Rerank documents: copies of the kept ones, best first, each with ``metadata["relevance_score"]``.

        The input documents are not modified; their ``id`` and other metadata are kept in the copies.
        """
        results = self.rerank(documents, query, callbacks=callbacks)
        return _scored_copies(documents, results)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`; the scoring runs in a worker thread."""
        results = await self.arerank(documents, query, callbacks=callbacks)
        return _scored_copies(documents, results)

    # -- internals -------------------------------------------------------------------------------------------------
    def _call_settings(
        self, top_n: int | None | _Unset, instruction: str | None, score_threshold: float | None | _Unset
    ) -> tuple[int | None, str | None, float | None]:
        # An explicit argument wins even when falsy (never `x or self.x`): top_n=None and score_threshold=0.0 are
        # real requests.
        call_top_n = self.top_n if isinstance(top_n, _Unset) else _check_top_n(top_n)
        threshold = self.score_threshold if isinstance(score_threshold, _Unset) else score_threshold
        return call_top_n, instruction if instruction is not None else self.instruction, threshold

    def _run_metadata(self, top_n: int | None, score_threshold: float | None) -> dict[str, Any]:
        return {"pixie_model": self.model, "top_n": top_n, "score_threshold": score_threshold}

    def _rank(
        self,
        documents: Sequence[str | Document],
        query: str,
        top_n: int | None,
        instruction: str | None,
        score_threshold: float | None,
    ) -> list[dict[str, Any]]:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        texts = [_text_of(doc, i) for i, doc in enumerate(documents)]
        scores = self._get_scorer().score(query, texts, instruction=instruction)
        # sorted() is stable: equal scores keep their input order.
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        if score_threshold is not None:
            order = [i for i in order if scores[i] >= score_threshold]
        if top_n is not None:
            order = order[:top_n]
        return [{"index": i, "relevance_score": float(scores[i])} for i in order]


def _text_of(doc: object, position: int) -> str:
    if isinstance(doc, Document):
        text = doc.page_content
        if not isinstance(text, str):
            raise TypeError(f"documents[{position}].page_content must be a str, not {type(text).__name__}")
        return text
    if isinstance(doc, str):
        return doc
    raise TypeError(f"documents[{position}] must be a str or a langchain Document, not {type(doc).__name__}")


def _scored_copies(documents: Sequence[Document], results: list[dict[str, Any]]) -> list[Document]:
    copies = []
    for result in results:
        doc = documents[result["index"]]
        # A new metadata dict on a model_copy: the caller's Document stays untouched, `id` survives, and a stale
        # relevance_score from an earlier reranker is overwritten rather than kept.
        metadata = {**doc.metadata, "relevance_score": result["relevance_score"]}
        copies.append(doc.model_copy(update={"metadata": metadata}))
    return copies


def _run_outputs(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scores": [r["relevance_score"] for r in results],
        "indices": [r["index"] for r in results],
    }
