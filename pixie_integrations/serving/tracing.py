"""The server's span of a scoring request: an OpenInference ``RERANKER`` span (see :mod:`pixie_integrations.tracing`),
a child of the caller's ``traceparent`` header (or of an HTTP instrumentation's span, where one is current)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from ..engine import ScoringEngine, ScoringResult
from ..ranking import rank_by_score
from ..tracing import TracedDocument, record_model, rerank_span

if TYPE_CHECKING:
    from ..scorer import PixieScorer

__all__ = ["traced_scoring"]


async def traced_scoring(
    score: Callable[[], Awaitable[ScoringResult]],
    *,
    path: str,
    headers: Mapping[str, str],
    scorer: PixieScorer,
    engine: ScoringEngine,
    pairs: list[tuple[str, str]],
    instruction: str | None,
    raw: bool,
    ranked: bool = False,
    top_n: int | None = None,
) -> ScoringResult:
    """``await score()`` inside the request's span, which records the pairs, the engine's work and the scores.

    ``ranked``: a ``/rerank`` route, whose answer is the documents best first, cut to ``top_n``; the span's output
    documents are those. Otherwise (``/score``) every pair's score, in input order.
    """
    with rerank_span(f"pixie.serve {path}", entry_point="server", kind="SERVER", carrier=headers) as span:
        if span.recording:
            queries = {q for q, _ in pairs}
            span.request(
                query=next(iter(queries)) if len(queries) == 1 else None,
                model_name=scorer.model_name,
                top_k=top_n,
                instruction=instruction if instruction is not None else scorer.instruction,
                documents=[TracedDocument(d) for _, d in pairs],
            )
        result = await score()
        if span.recording:
            record_model(span, scorer, engine.settings, engine=True, raw=raw)
            span.work(
                pairs=len(pairs),
                tokens=result.tokens,
                truncated=result.truncated,
                batches=result.batches,
                shared_prefix_batches=result.shared_prefix_batches,
                queued_seconds=result.queued_s,
            )
            if ranked:
                hits = rank_by_score(result.scores, [d for _, d in pairs], top_n)
                span.result((TracedDocument(r.document, score=r.score) for r in hits), indices=[r.index for r in hits])
            else:
                span.result(TracedDocument(d, score=s) for (_, d), s in zip(pairs, result.scores))
        return result
