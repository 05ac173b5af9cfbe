"""Input checks shared by every scorer (local or remote): bad input is a clear ``TypeError``, nothing is dropped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["check_documents", "check_pairs", "check_query"]


def check_query(query: object) -> None:
    """A query must be a ``str`` (an empty one is fine: it is scored)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, not {type(query).__name__}")


def check_documents(documents: object) -> list[str]:
    """Documents as a list of ``str``; a non-str names its index and type."""
    if isinstance(documents, str):
        raise TypeError("documents must be a sequence of str, not a single str")
    docs = list(documents)  # type: ignore[call-overload]
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise TypeError(f"documents[{i}] must be a str, not {type(doc).__name__}")
    return docs


def check_pairs(pairs: Iterable[tuple[str, str] | Sequence[str]]) -> list[tuple[str, str]]:
    """(query, document) pairs of ``str``; a bad one names its position."""
    checked: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or len(pair) != 2:
            raise TypeError(f"pairs[{i}] must be a (query, document) pair, got {type(pair).__name__}")
        query, document = pair
        if not isinstance(query, str):
            raise TypeError(f"pairs[{i}][0] (the query) must be a str, not {type(query).__name__}")
        if not isinstance(document, str):
            raise TypeError(f"pairs[{i}][1] (the document) must be a str, not {type(document).__name__}")
        checked.append((query, document))
    return checked
