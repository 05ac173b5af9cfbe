"""Your own scorer: any object with ``model_name``, ``instruction`` and ``score`` drops into the adapters, and the
optional members (``ascore``, ``score_pairs``, ``rank``) are used where it has them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pixie_integrations import PixieScorer, Scorer
from pixie_integrations.protocols import SCORER_MEMBERS, rank_with, score_pairs_with, scorer_problem

ROOT = Path(__file__).resolve().parent.parent
QUERY = "satellite data for agriculture"
TEXTS = ["crop monitoring from orbit", "a fox jumps", "ocean and agriculture from satellites"]


class Minimal:
    """The three members the docs name, and nothing else (a cache or a client of another server, say)."""

    def __init__(self, inner: PixieScorer) -> None:
        self.inner, self.model_name, self.instruction = inner, inner.model_name, inner.instruction
        self.calls: list[str] = []

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        self.calls.append("score")
        return self.inner.score(query, documents, instruction=instruction, raw=raw)


class WithAscore(Minimal):
    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        self.calls.append("ascore")
        return self.inner.score(query, documents, instruction=instruction, raw=raw)


class NoScore:
    model_name = "x"
    instruction = "y"


def test_three_members_make_a_scorer(tiny_scorer: PixieScorer) -> None:
    assert isinstance(Minimal(tiny_scorer), Scorer)
    assert scorer_problem(Minimal(tiny_scorer)) is None
    problem = scorer_problem(NoScore())
    assert problem is not None and SCORER_MEMBERS in problem and problem.endswith("NoScore has no score")


def test_pairs_and_ranks_come_from_score_when_a_scorer_has_no_own(tiny_scorer: PixieScorer) -> None:
    own = Minimal(tiny_scorer)
    pairs = [(QUERY, TEXTS[0]), ("another query", TEXTS[1]), (QUERY, TEXTS[2])]
    assert score_pairs_with(own, pairs) == pytest.approx(tiny_scorer.score_pairs(pairs), abs=1e-6)
    assert own.calls == ["score", "score"]  # one call per query
    assert rank_with(own, QUERY, TEXTS, top_n=2) == tiny_scorer.rank(QUERY, TEXTS, top_n=2)
    # A scorer with its own score_pairs and rank is asked for them.
    assert score_pairs_with(tiny_scorer, pairs) == tiny_scorer.score_pairs(pairs)
    assert rank_with(tiny_scorer, QUERY, TEXTS) == tiny_scorer.rank(QUERY, TEXTS)


def test_langchain_takes_any_scorer_and_awaits_ascore_where_it_has_one(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from pydantic import ValidationError

    from pixie_integrations.langchain import PixieRerank

    docs = [Document(page_content=t) for t in TEXTS]
    want = [d.page_content for d in PixieRerank(scorer=tiny_scorer, top_n=2).compress_documents(docs, QUERY)]
    minimal = Minimal(tiny_scorer)
    reranker = PixieRerank(scorer=minimal, top_n=2)
    assert [d.page_content for d in reranker.compress_documents(docs, QUERY)] == want
    assert [d.page_content for d in asyncio.run(reranker.acompress_documents(docs, QUERY))] == want
    assert minimal.calls == ["score", "score"]  # async: score in a worker thread
    awaited = WithAscore(tiny_scorer)
    asyncio.run(PixieRerank(scorer=awaited).acompress_documents(docs, QUERY))
    assert awaited.calls == ["ascore"]
    with pytest.raises(ValidationError) as refused:
        PixieRerank(scorer=NoScore())
    assert SCORER_MEMBERS in str(refused.value)


def test_llama_index_takes_any_scorer_and_awaits_ascore_where_it_has_one(tiny_scorer: PixieScorer) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from pixie_integrations.llama_index import PixieRerank

    def nodes() -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(TEXTS)]

    want = [n.node.node_id for n in PixieRerank(scorer=tiny_scorer).postprocess_nodes(nodes(), query_str=QUERY)]
    minimal = Minimal(tiny_scorer)
    reranker = PixieRerank(scorer=minimal)
    assert reranker.model == tiny_scorer.model_name
    assert [n.node.node_id for n in reranker.postprocess_nodes(nodes(), query_str=QUERY)] == want
    awaited = WithAscore(tiny_scorer)
    got: Any = asyncio.run(PixieRerank(scorer=awaited).apostprocess_nodes(nodes(), QueryBundle(QUERY)))
    assert [n.node.node_id for n in got] == want and awaited.calls == ["ascore"]
    with pytest.raises(TypeError) as refused:
        PixieRerank(scorer=NoScore())  # type: ignore[arg-type]
    assert SCORER_MEMBERS in str(refused.value)


def test_docs_list_the_members_the_error_messages_list() -> None:
    # "model_name, instruction and score(...)", in backticks.
    names, _, call = SCORER_MEMBERS.partition(" and ")
    written = ", ".join(f"`{name}`" for name in names.split(", ")) + f" and `{call}`"
    for page in ("serving.md", "scorer.md"):
        assert written in (ROOT / "docs" / page).read_text(encoding="utf-8").replace("\n", " "), page
