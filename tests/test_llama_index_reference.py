"""Switching from LlamaIndex's ``SentenceTransformerRerank`` to ``PixieRerank``: code and saved configs keep working.

Ports the reference's own unit tests (llama-index-core ``tests/postprocessor/test_sbert_rerank.py`` and
llama-index-postprocessor-sbert-rerank ``tests/test_postprocessor_sbert_rerank.py``) and adds what a switching user
relies on: the positional ``(top_n, model)`` order, ``trust_remote_code``, ``from_dict`` of a saved reference config,
and the same ranking as the real reference on an encoder cross-encoder (both score the same plain pair). The one
intended difference: the reference sets scores on the caller's ``NodeWithScore`` objects, ``PixieRerank`` returns
new ones.
"""

from __future__ import annotations

import builtins
import copy
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from pixie_integrations import PixieScorer
from pixie_integrations.install import install_hint
from pixie_integrations.llama_index import PixieRerank

QUERY = "Which city is the capital of Bosnia and Herzegovina?"
TEXTS = ["Berlin is in Germany.", "Sarajevo is the capital of Bosnia.", "Belgrade", "Paris, France", "Oslo"]


def _nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"tags": ["a"]}), score=0.1 * i)
        for i, t in enumerate(TEXTS)
    ]


def _reference_class() -> Any:
    pytest.importorskip("sentence_transformers")
    from llama_index.core.postprocessor import SentenceTransformerRerank

    return SentenceTransformerRerank


# -- the reference's own unit tests --------------------------------------------------------------------------------
def test_class() -> None:
    names_of_base_classes = [b.__name__ for b in PixieRerank.__mro__]
    assert BaseNodePostprocessor.__name__ in names_of_base_classes


def test_init() -> None:
    assert PixieRerank()  # nothing is loaded before the first query


def test_device() -> None:
    assert PixieRerank(device="cpu").device == "cpu"
    assert PixieRerank().device is None  # picked at load time (cuda, then mps, then cpu)


def test_missing_dependency_message_is_a_single_string(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("llama_index"):
            raise ImportError("mocked missing dependency")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pixie_integrations.llama_index", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError) as exc_info:
        import pixie_integrations.llama_index  # noqa: F401
    assert len(exc_info.value.args) == 1
    assert install_hint("llama-index") in str(exc_info.value)


# -- the reference's signature -------------------------------------------------------------------------------------
def test_top_n_and_model_are_taken_positionally_in_the_references_order(tiny_reranker: Path) -> None:
    reranker = PixieRerank(3, str(tiny_reranker), "cpu", True)
    assert (reranker.top_n, reranker.model, reranker.device, reranker.keep_retrieval_score) == (
        3,
        str(tiny_reranker),
        "cpu",
        True,
    )
    with pytest.raises(ValueError, match=r"\(top_n, model, \.\.\.\) positionally"):
        PixieRerank(str(tiny_reranker))  # type: ignore[arg-type]  # the model where top_n goes


def test_trust_remote_code_is_accepted_and_reaches_the_scorer(tiny_encoder: Path) -> None:
    reranker = PixieRerank(2, str(tiny_encoder), "cpu", trust_remote_code=True, dtype="float32")
    assert reranker.trust_remote_code is True
    out = reranker.postprocess_nodes(_nodes(), query_str=QUERY)
    assert len(out) == 2
    assert PixieRerank().trust_remote_code is False  # a safe default: no code from the Hub unless asked


def test_from_dict_of_the_cores_saved_config(tiny_encoder: Path) -> None:
    # What llama_index.core's SentenceTransformerRerank(top_n=3, model=..., device="cpu").to_dict() saves.
    saved = {
        "model": str(tiny_encoder),
        "top_n": 3,
        "device": "cpu",
        "keep_retrieval_score": True,
        "trust_remote_code": False,
        "class_name": "SentenceTransformerRerank",
    }
    for data in (saved, {**saved, "class_name": "PixieRerank"}):
        frozen = copy.deepcopy(data)
        reranker = PixieRerank.from_dict(data)
        assert data == frozen
        assert (reranker.model, reranker.top_n, reranker.device) == (str(tiny_encoder), 3, "cpu")
        assert reranker.keep_retrieval_score is True
        out = reranker.postprocess_nodes(_nodes(), query_str=QUERY)
        assert len(out) == 3 and all("retrieval_score" in n.node.metadata for n in out)
    assert PixieRerank.from_json(PixieRerank.from_dict(saved).to_json()).top_n == 3


def test_from_dict_of_the_packages_saved_config(tiny_encoder: Path) -> None:
    # What llama-index-postprocessor-sbert-rerank's SentenceTransformerRerank(...).to_dict() saves.
    saved = {
        "model": str(tiny_encoder),
        "top_n": 2,
        "keep_retrieval_score": False,
        "cross_encoder_kwargs": {},
        "class_name": "SentenceTransformerRerank",
    }
    assert PixieRerank.from_dict(saved).top_n == 2
    tuned = PixieRerank.from_dict({**saved, "cross_encoder_kwargs": {"max_length": 128, "trust_remote_code": True}})
    assert (tuned.max_length, tuned.trust_remote_code) == (128, True)
    with pytest.raises(ValueError, match="cross_encoder_kwargs"):
        PixieRerank.from_dict({**saved, "cross_encoder_kwargs": {"activation_fn": None}})


def test_a_real_saved_reference_loads_and_ranks_like_the_reference(tiny_encoder: Path) -> None:
    reference = _reference_class()(top_n=3, model=str(tiny_encoder), device="cpu", keep_retrieval_score=True)
    data = reference.to_dict()
    assert data["class_name"] == "SentenceTransformerRerank"
    ours = PixieRerank.from_dict({**data, "class_name": "PixieRerank"}, dtype="float32")

    given = _nodes()
    want = reference.postprocess_nodes(copy.deepcopy(given), query_bundle=QueryBundle(QUERY))
    got = ours.postprocess_nodes(given, query_bundle=QueryBundle(QUERY))
    assert [n.node.node_id for n in got] == [n.node.node_id for n in want]
    assert [n.score for n in got] == pytest.approx([float(n.score) for n in want], abs=1e-5)
    assert [n.node.metadata["retrieval_score"] for n in got] == [n.node.metadata["retrieval_score"] for n in want]


def test_the_one_intended_difference_new_nodes_and_untouched_inputs(tiny_encoder: Path) -> None:
    reference = _reference_class()(top_n=2, model=str(tiny_encoder), device="cpu", keep_retrieval_score=True)
    ours = PixieRerank(2, str(tiny_encoder), "cpu", True, dtype="float32")
    theirs_in, ours_in = _nodes(), _nodes()
    theirs_out = reference.postprocess_nodes(theirs_in, query_str=QUERY)
    ours_out = ours.postprocess_nodes(ours_in, query_str=QUERY)
    # The reference returns (some of) the caller's objects, rescored, and writes into their metadata.
    assert any(out is given for out in theirs_out for given in theirs_in)
    assert any("retrieval_score" in n.node.metadata for n in theirs_in)
    # PixieRerank: new objects; the caller's scores and metadata (nested values too) stay as they were.
    assert not any(out is given for out in ours_out for given in ours_in)
    assert [n.score for n in ours_in] == [n.score for n in _nodes()]
    assert all(n.node.metadata == {"tags": ["a"]} for n in ours_in)
    ours_out[0].node.metadata["tags"].append("b")
    assert all(n.node.metadata == {"tags": ["a"]} for n in ours_in)


def test_scores_match_the_scorer_on_the_template_model(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    reranker = PixieRerank(5, str(tiny_reranker), "cpu", dtype="float32")
    out = reranker.postprocess_nodes(_nodes(), query_str=QUERY)
    # the reference's text: node.node.get_content(metadata_mode=MetadataMode.EMBED), metadata included
    expected = tiny_scorer.score(QUERY, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in _nodes()])
    assert [n.score for n in out] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)
