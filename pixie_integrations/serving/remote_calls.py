"""Which HTTP requests one :class:`~pixie_integrations.serving.RemoteScorer` call makes: documents split by the
request cap (and by query where an API takes one query per request), the template applied here for vLLM, and
documents cut to ``max_length`` inside text B."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ..template import format_document, format_query
from .engines import DocumentCutter
from .remote_shapes import Call, infinity_rerank, pixie_score, tei_rerank, vllm_rerank, vllm_score

if TYPE_CHECKING:
    from .client import RemoteScorer

__all__ = ["CallPlanner"]

logger = logging.getLogger("pixie_integrations.serving.client")


class CallPlanner:
    """The requests of one scoring call of ``scorer`` (its API, family, caps and ``max_length``)."""

    def __init__(self, scorer: RemoteScorer) -> None:
        self._scorer = scorer
        self._cutter: DocumentCutter | None = None
        self._lock = threading.Lock()

    def calls(
        self,
        queries: list[str],
        documents: list[str],
        instruction: str,
        raw: bool,
        chunking: dict[str, Any] | None = None,
    ) -> list[Call]:
        """The requests scoring ``documents`` against ``queries`` (one query for all, or one per document)."""
        if not documents:
            return []
        count = len(documents)

        def query_of(i: int) -> str:
            return queries[0] if len(queries) == 1 else queries[i]

        cap = self._scorer.max_documents_per_request
        if self._scorer.api == "pixie" or (self._scorer.api == "vllm" and self._scorer.vllm_route == "score"):
            # Both take a list of queries (pairwise) or one query for all: split by position only.
            groups = [list(range(start, min(start + cap, count))) for start in range(0, count, cap)]
            return [
                self._pairwise_call([query_of(i) for i in g], g, documents, instruction, raw, chunking) for g in groups
            ]
        # One query per request (TEI, Infinity, vLLM's /v1/rerank): group the positions by query, then split.
        by_query: dict[str, list[int]] = {}
        for i in range(count):
            by_query.setdefault(query_of(i), []).append(i)
        calls = []
        for query, members in by_query.items():
            for start in range(0, len(members), cap):
                group = members[start : start + cap]
                calls.append(self._one_query_call(query, group, [documents[i] for i in group], instruction, raw))
        return calls

    def _pairwise_call(
        self,
        queries: list[str],
        positions: list[int],
        documents: list[str],
        instruction: str,
        raw: bool,
        chunking: dict[str, Any] | None = None,
    ) -> Call:
        texts = [documents[i] for i in positions]
        one_query = len(set(queries)) == 1
        if self._scorer.api == "pixie":
            query_field = queries[0] if one_query else queries
            return pixie_score(
                query_field,
                texts,
                positions,
                instruction=instruction,
                raw=raw,
                model=self._scorer.known_model_name,
                long_documents=chunking,
            )
        text_1: str | list[str]
        if self._scorer.family.uses_template:
            text_2 = self._documents_b(queries, texts, instruction)
            text_1 = (
                format_query(queries[0], instruction) if one_query else [format_query(q, instruction) for q in queries]
            )
        else:
            text_2 = texts
            text_1 = queries[0] if one_query else queries  # one text A for all documents (vLLM's 1:N form)
        return vllm_score(text_1, text_2, positions, raw=raw, model=self._scorer.known_model_name)

    def _one_query_call(self, query: str, positions: list[int], texts: list[str], instruction: str, raw: bool) -> Call:
        if self._scorer.api == "tei":
            return tei_rerank(query, texts, positions, raw=raw)
        if self._scorer.api == "infinity":
            return infinity_rerank(query, texts, positions, raw=raw, model=self._scorer.known_model_name)
        if self._scorer.family.uses_template:
            text_a, texts_b = (
                format_query(query, instruction),
                self._documents_b([query] * len(texts), texts, instruction),
            )
            return vllm_rerank(text_a, texts_b, positions, raw=raw, model=self._scorer.known_model_name)
        return vllm_rerank(query, texts, positions, raw=raw, model=self._scorer.known_model_name)

    def _documents_b(self, queries: list[str], texts: list[str], instruction: str) -> list[str]:
        """Text B of each pair, the document cut to ``max_length`` (template included) when one is set."""
        if self._scorer.max_length is None:
            return [format_document(d) for d in texts]
        cutter = self._cutter
        if cutter is None:
            name = self._scorer.tokenizer_name or self._scorer.model_name  # outside the lock: model_name may take it
            with self._lock:
                if self._cutter is None:
                    self._cutter = DocumentCutter(name, self._scorer.max_length)
                cutter = self._cutter
        cut, truncated = cutter.cut(queries, texts, instruction)
        if truncated:
            logger.warning(
                "%d of %d documents were longer than max_length=%d tokens with the template; their ends were cut.",
                truncated,
                len(texts),
                self._scorer.max_length,
            )
        return [format_document(d) for d in cut]
