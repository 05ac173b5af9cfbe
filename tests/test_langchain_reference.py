"""Switching from langchain-cohere's ``CohereRerank`` to ``PixieRerank``: Cohere-style calls keep their meaning.

Ports langchain-cohere's own tests (``libs/cohere/tests/unit_tests/test_rerank.py``: how documents are rendered to
text; ``integration_tests/test_rerank.py``: ``rerank`` on Documents and on dicts with ``rank_fields``) to run
against ``PixieRerank`` with the tiny model, and checks the rest of ``CohereRerank.rerank``'s signature:
``top_n=-1``, ``model=``, ``max_tokens_per_doc=``, and outputs that share no mutable metadata with the inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document

from pixie_integrations import PixieScorer, RankResult
from pixie_integrations.langchain import PixieRerank, _text_of

QUERY = "Test query"


@pytest.fixture
def reranker(tiny_scorer: PixieScorer) -> PixieRerank:
    return PixieRerank(scorer=tiny_scorer)


def _by_index(results: list[dict[str, Any]]) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in results}


# -- unit_tests/test_rerank.py -------------------------------------------------------------------------------------
def test_initialization(tiny_reranker: Path) -> None:
    PixieRerank(model=str(tiny_reranker))


def test_doc_to_string_with_string() -> None:
    assert _text_of("test str", 0, None) == "test str"


def test_doc_to_string_with_document() -> None:
    assert _text_of(Document(page_content="test str"), 0, None) == "test str"
    assert _text_of(Document(page_content="test str", metadata={"a": 1}), 0, ["a"]) == "test str"


def test_doc_to_string_with_dict() -> None:
    assert _text_of({"title": "hello", "text": "test str"}, 0, None) == "title: hello\ntext: test str\n"


def test_doc_to_string_with_dicts_with_rank_fields() -> None:
    assert _text_of({"title": "hello", "text": "test str"}, 0, ["text"]) == "text: test str\n"
    # rank_fields order wins; missing keys are skipped; an empty list keeps every field (as there)
    assert _text_of({"a": 1, "b": 2, "c": 3}, 0, ["c", "x", "a"]) == "c: 3\na: 1\n"
    assert _text_of({"a": 1}, 0, []) == "a: 1\n"


def test_dict_text_keeps_korean_readable() -> None:
    # The one rendering difference: PyYAML's default (langchain-cohere's) escapes non-ASCII as \uXXXX.
    assert _text_of({"text": "위성 데이터"}, 0, None) == "text: 위성 데이터\n"


# -- integration_tests/test_rerank.py ------------------------------------------------------------------------------
def test_rerank_documents(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    test_documents = [
        Document(page_content="This is a test document."),
        Document(page_content="Another test document."),
    ]
    results = reranker.rerank(test_documents, QUERY)
    assert len(results) == 2
    assert _by_index(results) == pytest.approx(
        dict(enumerate(tiny_scorer.score(QUERY, [d.page_content for d in test_documents]))), abs=1e-6
    )


def test_rerank_with_rank_fields(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    test_documents = [
        {"content": "This document is about Penguins.", "subject": "Physics"},
        {"content": "This document is about Physics.", "subject": "Penguins"},
    ]
    response = reranker.rerank(test_documents, "penguins", rank_fields=["content"])
    assert len(response) == 2
    # Only the content field is scored, as YAML: what CohereRerank sends.
    expected = tiny_scorer.score("penguins", [f"content: {d['content']}\n" for d in test_documents])
    assert _by_index(response) == pytest.approx(dict(enumerate(expected)), abs=1e-6)
    assert response[0]["relevance_score"] >= response[1]["relevance_score"]
    everything = reranker.rerank(test_documents, "penguins")
    assert _by_index(everything) != pytest.approx(_by_index(response), abs=1e-6)


async def test_arerank_documents_and_rank_fields(reranker: PixieRerank) -> None:
    docs = [{"content": "Penguins", "subject": "Physics"}, {"content": "Physics", "subject": "Penguins"}]
    sync = reranker.rerank(docs, "penguins", rank_fields=["content"], top_n=None)
    assert await reranker.arerank(docs, "penguins", rank_fields=["content"], top_n=None) == sync


# -- the rest of CohereRerank.rerank's signature -------------------------------------------------------------------
def test_top_n_minus_one_uses_the_instance_setting_and_none_keeps_all(tiny_scorer: PixieScorer) -> None:
    reranker = PixieRerank(scorer=tiny_scorer, top_n=2)
    docs = [f"document {i}" for i in range(5)]
    assert len(reranker.rerank(docs, QUERY)) == 2  # the default top_n=-1
    assert len(reranker.rerank(docs, QUERY, top_n=-1)) == 2
    assert len(reranker.rerank(docs, QUERY, top_n=0)) == 2
    assert len(reranker.rerank(docs, QUERY, top_n=None)) == 5
    assert len(reranker.rerank(docs, QUERY, top_n=4)) == 4


def test_model_per_call(tiny_reranker: Path, tiny_encoder: Path) -> None:
    reranker = PixieRerank(model=str(tiny_reranker), device="cpu", dtype="float32")
    docs = ["Berlin is in Germany.", "Paris is in France.", "Oslo"]
    own = reranker.rerank(docs, QUERY, top_n=None)
    assert reranker.rerank(docs, QUERY, top_n=None, model=str(tiny_reranker)) == own
    other = reranker.rerank(docs, QUERY, top_n=None, model=str(tiny_encoder))
    encoder = PixieScorer(str(tiny_encoder), device="cpu", dtype="float32")
    assert _by_index(other) == pytest.approx(dict(enumerate(encoder.score(QUERY, docs))), abs=1e-6)
    assert reranker._model_scorers[str(tiny_encoder)] is reranker._scorer_for(str(tiny_encoder))  # loaded once
    assert reranker.get_scorer().model_name == str(tiny_reranker)  # the instance's model is unchanged


def test_model_per_call_with_a_given_scorer_must_match_it(reranker: PixieRerank, tiny_encoder: Path) -> None:
    assert reranker.rerank(["a", "b"], QUERY, model=reranker.model)
    with pytest.raises(ValueError, match="given scorer"):
        reranker.rerank(["a", "b"], QUERY, model=str(tiny_encoder))


def test_max_tokens_per_doc_cuts_only_document_tokens(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    long_doc = "Satellite data for agriculture, defence and the ocean. " * 20
    docs = [long_doc, "short"]
    cut = reranker.rerank(docs, QUERY, top_n=None, max_tokens_per_doc=8)
    assert _by_index(cut) == pytest.approx(dict(enumerate(tiny_scorer.score(QUERY, docs, max_doc_tokens=8))), abs=1e-6)
    whole = _by_index(reranker.rerank(docs, QUERY, top_n=None))
    assert _by_index(cut)[0] != pytest.approx(whole[0], abs=1e-6)  # the long one was cut
    assert _by_index(cut)[1] == pytest.approx(whole[1], abs=1e-6)  # the short one was not
    with pytest.raises(ValueError, match="max_tokens_per_doc"):
        reranker.rerank(docs, QUERY, max_tokens_per_doc=0)


class _ScoreOnly:
    """A user scorer with the public protocol and no max_doc_tokens (as a minimal client would be)."""

    def __init__(self, inner: PixieScorer) -> None:
        self._inner = inner
        self.model_name = inner.model_name
        self.instruction = inner.instruction

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        return self._inner.score(query, documents, instruction=instruction, raw=raw)

    def score_pairs(self, pairs: Any, *, instruction: str | None = None, raw: bool = False) -> list[float]:
        return self._inner.score_pairs(pairs, instruction=instruction, raw=raw)

    def rank(self, query: str, documents: Sequence[str], **kwargs: Any) -> list[RankResult]:
        return self._inner.rank(query, documents, **kwargs)


def test_max_tokens_per_doc_with_a_scorer_that_cannot_cut_is_a_clear_error(tiny_scorer: PixieScorer) -> None:
    reranker = PixieRerank(scorer=_ScoreOnly(tiny_scorer))
    assert len(reranker.rerank(["a", "b"], QUERY)) == 2
    with pytest.raises(TypeError, match="max_doc_tokens"):
        reranker.rerank(["a", "b"], QUERY, max_tokens_per_doc=4)


def test_outputs_share_no_mutable_metadata_with_the_inputs(reranker: PixieRerank) -> None:
    docs = [
        Document(page_content=f"document {i}", id=f"d{i}", metadata={"tags": ["a"], "nested": {"k": [i]}})
        for i in range(3)
    ]
    frozen = copy.deepcopy(docs)
    out = reranker.compress_documents(docs, QUERY)
    out[0].metadata["tags"].append("b")
    out[0].metadata["nested"]["k"].append(99)
    assert docs == frozen
    assert [d.id for d in out] == [d.id for d in out if d.id in {"d0", "d1", "d2"}]


async def test_async_outputs_share_no_mutable_metadata_either(reranker: PixieRerank) -> None:
    docs = [Document(page_content=f"document {i}", metadata={"tags": ["a"]}) for i in range(3)]
    out = await reranker.acompress_documents(docs, QUERY)
    out[0].metadata["tags"].append("b")
    assert all(d.metadata == {"tags": ["a"]} for d in docs)
