"""The adapters' async paths and a scorer's ``ascore``: awaited when the scorer has it, ``score`` in a thread if not.

A user-supplied scorer is a documented use (``scorer=`` in LangChain and LlamaIndex), so the scorer here is a small
class of our own implementing the public protocol (``pixie_integrations.protocols.AsyncScorer``) around the real
tiny-model scorer. Haystack builds its own scorer, so there the real ``PixieScorer`` gets an ``ascore``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pixie_integrations import PixieScorer, RankResult
from pixie_integrations.protocols import AsyncScorer, Scorer, score_async

QUERY = "Which company analyses satellite data?"
TEXTS = ["Satellite data for agriculture.", "The quick brown fox.", "Earth observation for defence.", ""]


class AwaitedScorer:
    """The public protocol plus ``async def ascore``; ``score`` must not be used from async code."""

    def __init__(self, inner: PixieScorer) -> None:
        self._inner = inner
        self.model_name = inner.model_name
        self.instruction = inner.instruction
        self.async_calls: list[dict[str, Any]] = []
        self.sync_calls = 0

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        self.sync_calls += 1
        return self._inner.score(query, documents, instruction=instruction, raw=raw)

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        call = {"query": query, "documents": list(documents), "instruction": instruction, "raw": raw}
        self.async_calls.append({**call, "thread": threading.get_ident()})
        await asyncio.sleep(0)  # a real engine would wait for its batch here
        return self._inner.score(query, documents, instruction=instruction, raw=raw)

    def score_pairs(self, pairs: Any, *, instruction: str | None = None, raw: bool = False) -> list[float]:
        return self._inner.score_pairs(pairs, instruction=instruction, raw=raw)

    def rank(self, query: str, documents: Sequence[str], **kwargs: Any) -> list[RankResult]:
        return self._inner.rank(query, documents, **kwargs)


@pytest.fixture
def awaited(tiny_scorer: PixieScorer) -> AwaitedScorer:
    return AwaitedScorer(tiny_scorer)


def test_the_test_scorer_satisfies_the_public_protocols(awaited: AwaitedScorer, tiny_scorer: PixieScorer) -> None:
    assert isinstance(awaited, Scorer) and isinstance(awaited, AsyncScorer)
    assert isinstance(tiny_scorer, Scorer)


async def test_score_async_awaits_ascore_on_the_loop(awaited: AwaitedScorer, tiny_scorer: PixieScorer) -> None:
    scores = await score_async(awaited, QUERY, TEXTS, instruction="Judge it", raw=True)
    assert scores == tiny_scorer.score(QUERY, TEXTS, instruction="Judge it", raw=True)
    (call,) = awaited.async_calls
    assert call["thread"] == threading.get_ident() and awaited.sync_calls == 0


async def test_score_async_runs_a_sync_scorer_in_a_thread(tiny_scorer: PixieScorer) -> None:
    threads: list[int] = []

    class SyncOnly(AwaitedScorer):
        ascore = None  # type: ignore[assignment]

        def score(self, *args: Any, **kwargs: Any) -> list[float]:
            threads.append(threading.get_ident())
            return super().score(*args, **kwargs)

    assert await score_async(SyncOnly(tiny_scorer), QUERY, TEXTS) == tiny_scorer.score(QUERY, TEXTS)
    assert threads and threads[0] != threading.get_ident()


async def test_langchain_arerank_awaits_ascore(awaited: AwaitedScorer, tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from pixie_integrations.langchain import PixieRerank

    reranker = PixieRerank(scorer=awaited, top_n=None, instruction="Judge satellite relevance")
    docs = [Document(page_content=t) for t in TEXTS]
    out = await reranker.acompress_documents(docs, QUERY)
    (call,) = awaited.async_calls
    assert (call["query"], call["documents"], call["instruction"], call["raw"]) == (
        QUERY,
        TEXTS,
        "Judge satellite relevance",
        False,
    )
    assert awaited.sync_calls == 0
    expected = tiny_scorer.score(QUERY, TEXTS, instruction="Judge satellite relevance")
    assert sorted(d.metadata["relevance_score"] for d in out) == pytest.approx(sorted(expected))


async def test_llama_index_apostprocess_awaits_ascore(awaited: AwaitedScorer, tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

    from pixie_integrations.llama_index import PixieRerank

    reranker = PixieRerank(top_n=4, scorer=awaited)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in TEXTS]
    out = await reranker.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    (call,) = awaited.async_calls
    assert call["documents"] == [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert awaited.sync_calls == 0
    assert [n.score for n in out] == pytest.approx(sorted(tiny_scorer.score(QUERY, TEXTS), reverse=True))


async def test_haystack_run_async_awaits_a_scorers_ascore(
    tiny_reranker: Path, tiny_scorer: PixieScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("haystack")
    from haystack import Document
    from haystack.utils import ComponentDevice

    from pixie_integrations.haystack import PixieRanker

    calls: list[dict[str, Any]] = []

    async def ascore(self: PixieScorer, query: str, documents: Sequence[str], **kwargs: Any) -> list[float]:
        calls.append({"query": query, "documents": list(documents), **kwargs, "thread": threading.get_ident()})
        return self.score(query, documents, **kwargs)

    # The in-process scorer with an ascore (a batching engine's), as PixieRanker builds it.
    monkeypatch.setattr(PixieScorer, "ascore", ascore, raising=False)
    ranker = PixieRanker(
        model=str(tiny_reranker), device=ComponentDevice.from_str("cpu"), dtype="float32", scale_score=False
    )
    out = await ranker.run_async(query=QUERY, documents=[Document(content=t) for t in TEXTS])
    (call,) = calls
    assert call["query"] == QUERY and call["raw"] is True and call["instruction"] is None
    assert call["thread"] == threading.get_ident()
    expected = sorted(tiny_scorer.score(QUERY, TEXTS, raw=True), reverse=True)
    assert [d.score for d in out["documents"]] == pytest.approx(expected, abs=1e-5)
