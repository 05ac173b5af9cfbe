"""What the framework adapters need from a scorer: the :class:`Scorer` protocol, and how they call it.

:class:`~pixie_integrations.PixieScorer` (in-process) and
:class:`~pixie_integrations.serving.RemoteScorer` (a PIXIE or vLLM server) both satisfy it, so the adapters'
``scorer=`` takes either, or your own class with just :data:`SCORER_MEMBERS`. A scorer may also offer
``score_pairs``, ``rank`` and ``async def ascore(...)`` (same arguments as ``score``): :func:`score_async` awaits
``ascore`` where it exists (the adapters' async paths do), and :func:`score_pairs_with` / :func:`rank_with` call the
scorer's own ``score_pairs`` / ``rank`` where they exist and build them from ``score`` otherwise. Nothing here imports
torch.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from .chunking import LongDocuments
from .ranking import ChunkSpan, RankResult, rank_by_score

__all__ = [
    "SCORER_MEMBERS",
    "AsyncScorer",
    "ScoredDocuments",
    "Scorer",
    "ascore_documents",
    "rank_with",
    "score_async",
    "score_documents",
    "score_pairs_with",
    "scorer_problem",
]

SCORER_MEMBERS = "model_name, instruction and score(query, documents, *, instruction=None, raw=False)"
"""What a scorer needs, as the docs and the adapters' error messages say it."""


@runtime_checkable
class Scorer(Protocol):
    """Scores documents against a query, in input order, as Python floats: the members the adapters need.

    ``isinstance(obj, Scorer)`` only checks that the members exist (``runtime_checkable``), not their signatures.
    ``score_pairs``, ``rank`` and ``ascore`` are optional: see :func:`score_pairs_with`, :func:`rank_with` and
    :func:`score_async`.
    """

    @property
    def model_name(self) -> str:
        """The checkpoint the scores come from (hub id, path or served name): adapters report it in traces."""
        ...

    @property
    def instruction(self) -> str:
        """The task instruction used when a call gives none."""
        ...

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        """One score per document, in input order: the probability of relevance (the logit with ``raw=True``)."""
        ...


def scorer_problem(obj: object) -> str | None:
    """Why ``obj`` cannot be an adapter's ``scorer=`` (which members it lacks), or ``None`` when it can."""
    if isinstance(obj, Scorer):
        return None
    missing = [name for name in ("model_name", "instruction", "score") if not hasattr(obj, name)]
    return (
        f"scorer must have {SCORER_MEMBERS} (the pixie_integrations.Scorer protocol), such as a PixieScorer or a "
        f"RemoteScorer; {type(obj).__name__} has no {', '.join(missing)}"
    )


def score_pairs_with(
    scorer: Scorer,
    pairs: Iterable[tuple[str, str] | Sequence[str]],
    *,
    instruction: str | None = None,
    raw: bool = False,
) -> list[float]:
    """One score per (query, document) pair, in pair order: ``scorer.score_pairs`` where the scorer has it, else
    one ``scorer.score`` call per query (in order of first appearance)."""
    own = getattr(scorer, "score_pairs", None)
    if callable(own):
        return list(own(pairs, instruction=instruction, raw=raw))
    listed = [(query, document) for query, document in pairs]
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(listed):
        by_query.setdefault(query, []).append(i)
    scores = [0.0] * len(listed)
    for query, positions in by_query.items():
        got = scorer.score(query, [listed[i][1] for i in positions], instruction=instruction, raw=raw)
        for i, value in zip(positions, got, strict=True):
            scores[i] = float(value)
    return scores


def rank_with(
    scorer: Scorer,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    instruction: str | None = None,
    raw: bool = False,
) -> list[RankResult]:
    """The documents best first (ties keep input order), the best ``top_n`` (``None``: all): ``scorer.rank`` where
    the scorer has it, else ranked from ``scorer.score``."""
    own = getattr(scorer, "rank", None)
    if callable(own):
        return list(own(query, documents, top_n=top_n, instruction=instruction, raw=raw))
    scores = [float(s) for s in scorer.score(query, documents, instruction=instruction, raw=raw)]
    return rank_by_score(scores, documents, top_n)


@runtime_checkable
class AsyncScorer(Scorer, Protocol):
    """A :class:`Scorer` that also scores without blocking the event loop (a batching engine, an async client)."""

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        """:meth:`Scorer.score`, awaited."""
        ...


async def score_async(
    scorer: Scorer,
    query: str,
    documents: Sequence[str],
    *,
    instruction: str | None = None,
    raw: bool = False,
    **options: Any,
) -> list[float]:
    """Score from async code: ``await scorer.ascore(...)`` where the scorer has that coroutine method, else
    ``scorer.score(...)`` in a worker thread, so the event loop keeps serving either way.

    ``options`` (``max_doc_tokens=...``) are passed on as they are; give only the ones the scorer accepts.
    """
    ascore = getattr(scorer, "ascore", None)
    if ascore is not None and inspect.iscoroutinefunction(ascore):
        return await ascore(query, documents, instruction=instruction, raw=raw, **options)
    return await asyncio.to_thread(scorer.score, query, documents, instruction=instruction, raw=raw, **options)


ScoredDocuments = tuple[list[float], list[ChunkSpan | None] | None]
"""Scores in input order, and with chunking each document's winning chunk (``None`` without chunking)."""


def _chunking_rank(scorer: Scorer, name: str) -> Any:
    """The scorer's ``rank`` / ``arank`` if it takes ``long_documents``, else a ``TypeError`` saying what is needed."""
    method = getattr(scorer, name, None)
    if callable(method):
        parameters = inspect.signature(method).parameters
        if "long_documents" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return method
    if name == "arank":
        return None
    raise TypeError(
        f"long_documents='chunk' needs a scorer that chunks (rank(..., long_documents=...)), such as a PixieScorer "
        f"or a RemoteScorer; {type(scorer).__name__} has no such rank."
    )


def _in_input_order(ranked: Sequence[RankResult], count: int) -> ScoredDocuments:
    if len(ranked) != count:  # a scorer bug must not silently drop or misalign documents
        raise RuntimeError(f"The scorer ranked {len(ranked)} documents of {count}.")
    scores = [0.0] * count
    spans: list[ChunkSpan | None] = [None] * count
    for result in ranked:
        scores[result.index] = float(result.score)
        spans[result.index] = result.chunk
    return scores, spans


def score_documents(
    scorer: Scorer,
    query: str,
    documents: Sequence[str],
    *,
    instruction: str | None = None,
    raw: bool = False,
    long_documents: LongDocuments | None = None,
    **options: Any,
) -> ScoredDocuments:
    """What the adapters score with: ``scorer.score`` (truncating), or with ``long_documents`` chunking,
    ``scorer.rank(..., top_n=None, long_documents=...)`` put back in input order with each winning chunk.

    ``options`` (``max_doc_tokens=...``) are passed on as they are; give only the ones the scorer accepts.

    Raises:
        TypeError: Chunking was asked of a scorer whose ``rank`` takes no ``long_documents``.
    """
    if long_documents is None or not long_documents.chunked:
        return [float(s) for s in scorer.score(query, documents, instruction=instruction, raw=raw, **options)], None
    rank = _chunking_rank(scorer, "rank")
    ranked = rank(
        query, documents, top_n=None, instruction=instruction, raw=raw, long_documents=long_documents, **options
    )
    return _in_input_order(ranked, len(documents))


async def ascore_documents(
    scorer: Scorer,
    query: str,
    documents: Sequence[str],
    *,
    instruction: str | None = None,
    raw: bool = False,
    long_documents: LongDocuments | None = None,
    **options: Any,
) -> ScoredDocuments:
    """:func:`score_documents` from async code: ``ascore`` / ``arank`` awaited where the scorer has them, else the
    synchronous call in a worker thread."""
    if long_documents is None or not long_documents.chunked:
        scores = await score_async(scorer, query, documents, instruction=instruction, raw=raw, **options)
        return [float(s) for s in scores], None
    arank = _chunking_rank(scorer, "arank")
    if arank is not None and inspect.iscoroutinefunction(arank):
        ranked = await arank(
            query, documents, top_n=None, instruction=instruction, raw=raw, long_documents=long_documents, **options
        )
        return _in_input_order(ranked, len(documents))
    return await asyncio.to_thread(
        score_documents,
        scorer,
        query,
        documents,
        instruction=instruction,
        raw=raw,
        long_documents=long_documents,
        **options,
    )
