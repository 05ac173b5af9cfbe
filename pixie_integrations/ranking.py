"""What :meth:`PixieScorer.rank` returns (torch-free, so remote clients can return it too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RankResult", "check_top_n", "rank_by_score"]


@dataclass(frozen=True)
class RankResult:
    """One ranked document: its position in the input, its score and its text."""

    index: int
    """Position of the document in the list given to :meth:`PixieScorer.rank`."""
    score: float
    """Relevance probability (or the logit with ``raw=True``)."""
    document: str
    """The document text that was scored."""


def check_top_n(top_n: object) -> None:
    """``top_n`` must be a positive int or None (None keeps all); anything else is a ``ValueError``."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0):
        raise ValueError(f"top_n must be a positive int or None, got {top_n!r}")


def rank_by_score(scores: Sequence[float], documents: Sequence[str], top_n: int | None) -> list[RankResult]:
    """Results best first; ties keep input order (a stable sort); ``top_n=None`` keeps all.

    Raises:
        ValueError: ``top_n`` is not a positive int or None.
    """
    check_top_n(top_n)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if top_n is not None:
        order = order[:top_n]
    return [RankResult(index=i, score=scores[i], document=documents[i]) for i in order]
