"""What :meth:`PixieScorer.rank` returns (torch-free, so remote clients can return it too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CHUNK_METADATA_KEY", "ChunkSpan", "RankResult", "check_top_n", "rank_by_score"]

CHUNK_METADATA_KEY = "pixie_chunk"
"""Where the adapters put a chunked document's winning :class:`ChunkSpan` (as :meth:`ChunkSpan.to_dict`)."""


@dataclass(frozen=True)
class ChunkSpan:
    """The chunk of a document that decided its score (``long_documents="chunk"``)."""

    index: int
    """Which of the document's chunks (0-based, in document order)."""
    start: int
    """Character offset in the document where the chunk starts."""
    end: int
    """Character offset where it ends (exclusive): ``document[start:end]`` is the chunk."""
    chunks: int
    """How many chunks of the document were scored (1: it fitted whole)."""
    chunks_dropped: int = 0
    """Chunks past ``max_chunks`` that were not scored."""

    def to_dict(self) -> dict[str, int]:
        """The span as JSON-ready values (what the adapters store under ``pixie_chunk``)."""
        return {
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "chunks": self.chunks,
            "chunks_dropped": self.chunks_dropped,
        }


@dataclass(frozen=True)
class RankResult:
    """One ranked document: its position in the input, its score and its text."""

    index: int
    """Position of the document in the list given to :meth:`PixieScorer.rank`."""
    score: float
    """Relevance probability (or the logit with ``raw=True``)."""
    document: str
    """The document text that was scored."""
    chunk: ChunkSpan | None = None
    """With ``long_documents="chunk"``: the chunk that decided the score; ``None`` otherwise."""


def check_top_n(top_n: object) -> None:
    """``top_n`` must be a positive int or None (None keeps all); anything else is a ``ValueError``."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0):
        raise ValueError(f"top_n must be a positive int or None, got {top_n!r}")


def rank_by_score(
    scores: Sequence[float],
    documents: Sequence[str],
    top_n: int | None,
    chunks: Sequence[ChunkSpan] | None = None,
) -> list[RankResult]:
    """Results best first; ties keep input order (a stable sort); ``top_n=None`` keeps all; ``chunks``: each
    document's winning chunk, in input order.

    Raises:
        ValueError: ``top_n`` is not a positive int or None.
    """
    check_top_n(top_n)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if top_n is not None:
        order = order[:top_n]
    return [
        RankResult(index=i, score=scores[i], document=documents[i], chunk=chunks[i] if chunks is not None else None)
        for i in order
    ]
