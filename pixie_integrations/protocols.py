"""What the framework adapters need from a scorer: the :class:`Scorer` protocol, and how they call it from async code.

:class:`~pixie_integrations.PixieScorer` (in-process) and
:class:`~pixie_integrations.serving.RemoteScorer` (a PIXIE or vLLM server) both satisfy it, so the adapters'
``scorer=`` takes either (or your own class). A scorer may also offer ``async def ascore(...)`` (same arguments as
``score``): the adapters' async paths then await it instead of running ``score`` in a worker thread. Nothing here
imports torch.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from .ranking import RankResult

__all__ = ["AsyncScorer", "Scorer", "score_async"]


@runtime_checkable
class Scorer(Protocol):
    """Scores documents against a query, in input order, as Python floats.

    ``isinstance(obj, Scorer)`` only checks that the members exist (``runtime_checkable``), not their signatures.
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

    def score_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
    ) -> list[float]:
        """One score per (query, document) pair, in pair order."""
        ...

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
    ) -> list[RankResult]:
        """The documents best first (ties keep input order), the best ``top_n`` of them (``None``: all)."""
        ...


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
