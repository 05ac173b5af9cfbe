"""The request and answer shapes of each API that :class:`~pixie_integrations.serving.RemoteScorer` speaks.

A :class:`Call` is one HTTP request of a scoring call: the path and JSON it posts, the positions of its documents
in the call's output, and how its scores are read from the answer. The builders here take text that is ready to
send (the scorer formats the template and cuts documents first); the readers check every answer's shape and place
scores by their ``index`` wherever a server answers best first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..ranking import ChunkSpan
from .remote_errors import unexpected_answer

__all__ = [
    "APIS",
    "DEFAULT_DOCUMENT_CAP",
    "VLLM_ROUTES",
    "Api",
    "Call",
    "infinity_rerank",
    "logit",
    "pixie_score",
    "place_scores",
    "tei_rerank",
    "vllm_rerank",
    "vllm_score",
]

Api = Literal["pixie", "vllm", "tei", "infinity"]
APIS = ("pixie", "vllm", "tei", "infinity")
VLLM_ROUTES = ("score", "rerank")
DEFAULT_DOCUMENT_CAP = {"pixie": 128, "vllm": 128, "tei": 32, "infinity": 256}
"""Documents per request unless told otherwise: TEI's default --max-client-batch-size is 32; Infinity takes 2048."""


@dataclass(frozen=True)
class Call:
    """One HTTP request of a scoring call: what to post, and where its scores go in the call's output."""

    path: str
    payload: dict[str, Any]
    positions: list[int]
    parse: Callable[[Any, str], list[float]]
    """The request's scores from the answer (and the URL, for errors), in the order of ``positions``."""


# -- requests --------------------------------------------------------------------------------------------------------
def pixie_score(
    queries: str | list[str],
    texts: list[str],
    positions: list[int],
    *,
    instruction: str,
    raw: bool,
    model: str | None,
    long_documents: dict[str, Any] | None = None,
) -> Call:
    """This project's server ``POST /score``: raw text, the server applies the template.

    ``long_documents``: the request's long-document fields (``{"long_documents": "chunk", "chunk_tokens": ...}``);
    the answer's values are then ``(score, ChunkSpan)`` pairs.
    """
    payload: dict[str, Any] = {"queries": queries, "documents": texts, "instruction": instruction, "raw": raw}
    if model is not None:
        payload["model"] = model
    if long_documents is not None:
        payload.update(long_documents)
        return Call("/score", payload, positions, _pixie_chunked_scores(len(texts)))
    return Call("/score", payload, positions, _pixie_scores(len(texts)))


def vllm_score(
    text_1: str | list[str], text_2: list[str], positions: list[int], *, raw: bool, model: str | None
) -> Call:
    """vLLM ``POST /score`` (text_1 1:N or N:N). Never ``truncate_prompt_tokens``: vLLM cuts the end, the suffix."""
    payload: dict[str, Any] = {"text_1": text_1, "text_2": text_2}
    if model is not None:
        payload["model"] = model
    return Call("/score", payload, positions, _vllm_scores(len(text_2), raw))


def vllm_rerank(query: str, documents: list[str], positions: list[int], *, raw: bool, model: str | None) -> Call:
    """vLLM ``POST /v1/rerank``: the same scoring as ``/score`` (query = text A, each document = a text B)."""
    payload: dict[str, Any] = {"query": query, "documents": documents, "top_n": len(documents)}
    if model is not None:
        payload["model"] = model
    parse = _cohere_results(len(documents), "relevance_score")
    if raw:
        return Call("/v1/rerank", payload, positions, lambda body, url: [logit(p) for p in parse(body, url)])
    return Call("/v1/rerank", payload, positions, parse)


def tei_rerank(query: str, texts: list[str], positions: list[int], *, raw: bool) -> Call:
    """TEI ``POST /rerank``; ``truncate`` cuts the document from the right to TEI's limit, as the local scorer cuts
    an encoder's document. Scores come back best first."""
    payload: dict[str, Any] = {"query": query, "texts": texts, "raw_scores": raw, "truncate": True}
    return Call("/rerank", payload, positions, _tei_scores(len(texts)))


def infinity_rerank(query: str, texts: list[str], positions: list[int], *, raw: bool, model: str | None) -> Call:
    """Infinity ``POST /rerank`` (Cohere's shape)."""
    payload: dict[str, Any] = {"query": query, "documents": texts, "raw_scores": raw, "return_documents": False}
    if model is not None:
        payload["model"] = model
    return Call("/rerank", payload, positions, _cohere_results(len(texts), "relevance_score"))


# -- answers ---------------------------------------------------------------------------------------------------------
def place_scores(calls: list[Call], answers: list[list[Any]], count: int) -> list[Any]:
    """The scores of a whole call, each request's answer put back at its documents' positions."""
    scores: list[Any] = [0.0] * count
    for call, answer in zip(calls, answers):
        for position, score in zip(call.positions, answer):
            scores[position] = score
    return scores


def logit(p: float) -> float:
    """``log p - log(1 - p)``: the logit of a probability a server returned; infinite at 0 and 1."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


def _pixie_scores(count: int) -> Callable[[Any, str], list[float]]:
    def parse(body: Any, url: str) -> list[float]:
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or len(scores) != count:
            raise unexpected_answer(url, f"expected 'scores' with {count} numbers")
        return [_as_float(s, url) for s in scores]

    return parse


def _pixie_chunked_scores(count: int) -> Callable[[Any, str], list[Any]]:
    scores_of = _pixie_scores(count)

    def parse(body: Any, url: str) -> list[Any]:
        scores = scores_of(body, url)
        chunks = body.get("chunks")
        if not isinstance(chunks, list) or len(chunks) != count:
            raise unexpected_answer(url, f"expected 'chunks' with {count} spans (is it a pixie-rerank server?)")
        try:
            spans = [ChunkSpan(**chunk) for chunk in chunks]
        except TypeError:
            raise unexpected_answer(url, "expected each chunk as {index, start, end, chunks, chunks_dropped}") from None
        return list(zip(scores, spans, strict=True))

    return parse


def _vllm_scores(count: int, raw: bool) -> Callable[[Any, str], list[float]]:
    def parse(body: Any, url: str) -> list[float]:
        probabilities = _by_index(body.get("data") if isinstance(body, dict) else None, count, url, "score")
        return [logit(p) for p in probabilities] if raw else probabilities

    return parse


def _tei_scores(count: int) -> Callable[[Any, str], list[float]]:
    def parse(body: Any, url: str) -> list[float]:
        return _by_index(body, count, url, "score")

    return parse


def _cohere_results(count: int, key: str) -> Callable[[Any, str], list[float]]:
    def parse(body: Any, url: str) -> list[float]:
        # Cohere's shape ("results"); Infinity before 0.0.60 named it "data".
        items = body.get("results", body.get("data")) if isinstance(body, dict) else None
        return _by_index(items, count, url, key)

    return parse


def _by_index(items: Any, count: int, url: str, key: str) -> list[float]:
    if not isinstance(items, list) or len(items) != count:
        raise unexpected_answer(url, f"expected {count} results")
    by_index: dict[int, float] = {}
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count or index in by_index:
            raise unexpected_answer(url, "each result needs a distinct 'index' within range")
        by_index[index] = _as_float(item.get(key), url)
    # Servers answer best first (TEI, rerank routes) or in input order (vLLM /score): placed by "index" either way.
    return [by_index[i] for i in range(count)]


def _as_float(value: Any, url: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise unexpected_answer(url, f"a score is {value!r}, not a number")
    return float(value)
