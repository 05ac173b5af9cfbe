"""Switching from ``SentenceTransformersSimilarityRanker`` (sentence-transformers-haystack 2.x) to ``PixieRanker``.

The reference ranker's own unit tests (haystack-core-integrations, ``integrations/sentence_transformers/tests/
test_sentence_transformers_similarity.py``), ported to run against ``PixieRanker``. They mock ``CrossEncoder`` to see
what it is given; here the real tiny model scores instead, and each test checks that the scores equal the scorer's on
exactly the texts the reference would have built. Where the reference package is installed, its real component also
saves the dicts and pipelines that ``PixieRanker`` must load, and ranks side by side with it on an encoder
cross-encoder (where both score the same plain pair).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import torch
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.core.serialization import generate_qualified_class_name
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice, Secret

from pixie_integrations import PixieScorer
from pixie_integrations.haystack import PixieRanker

REFERENCE_TYPE = (
    "haystack_integrations.components.rankers.sentence_transformers.sentence_transformers_similarity."
    "SentenceTransformersSimilarityRanker"
)
OUR_TYPE = generate_qualified_class_name(PixieRanker)  # wherever the class's public home is
CPU = ComponentDevice.from_str("cpu")


def _reference_class() -> Any:
    module = pytest.importorskip(
        "haystack_integrations.components.rankers.sentence_transformers",
        reason="sentence-transformers-haystack (the reference ranker) is not installed",
    )
    return module.SentenceTransformersSimilarityRanker


def _swap_type(data: dict[str, Any]) -> dict[str, Any]:
    assert data["type"] == REFERENCE_TYPE
    return {**data, "type": OUR_TYPE}


def _scores(scorer: PixieScorer, query: str, texts: list[str], **kw: Any) -> list[float]:
    return scorer.score(query, texts, **kw)


@pytest.fixture
def ranker(tiny_reranker: Path) -> PixieRanker:
    return PixieRanker(model=str(tiny_reranker), device=CPU, dtype="float32")


# -- init, to_dict, from_dict (TestSentenceTransformersSimilarityRanker.test_init_* / test_to_dict* / test_from_dict*)
def test_init_invalid_top_k() -> None:
    with pytest.raises(ValueError):
        PixieRanker(top_k=-1)


def test_init_torch_backend_is_accepted_and_others_are_refused_by_name() -> None:
    assert PixieRanker(backend="torch", trust_remote_code=True).backend == "torch"
    for backend in ("onnx", "openvino"):
        with pytest.raises(ValueError, match=r"backend='.*' is not supported.*\('torch',\)"):
            PixieRanker(backend=backend)  # type: ignore[arg-type]


def test_to_dict_carries_every_key_the_reference_saves() -> None:
    params = PixieRanker().to_dict()["init_parameters"]
    reference_defaults = {
        "top_k": 10,
        "token": {"env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False, "type": "env_var"},
        "query_prefix": "",
        "query_suffix": "",
        "document_prefix": "",
        "document_suffix": "",
        "meta_fields_to_embed": [],
        "embedding_separator": "\n",
        "scale_score": True,
        "score_threshold": None,
        "trust_remote_code": False,
        "model_kwargs": None,
        "tokenizer_kwargs": None,
        "config_kwargs": None,
        "backend": "torch",
    }
    assert {key: params[key] for key in reference_defaults} == reference_defaults
    # Intended differences (docs/haystack.md): no device pinned, no default pair cap (token budget batching).
    assert params["device"] is None
    assert params["batch_size"] is None


def test_to_dict_with_custom_init_parameters() -> None:
    component = PixieRanker(
        model="my_model",
        device=ComponentDevice.from_str("cuda:0"),
        token=Secret.from_env_var("ENV_VAR", strict=False),
        top_k=5,
        query_prefix="query_instruction: ",
        query_suffix="\n",
        document_prefix="document_instruction: ",
        document_suffix="\n",
        scale_score=False,
        score_threshold=0.01,
        trust_remote_code=True,
        model_kwargs={"torch_dtype": torch.float16},
        tokenizer_kwargs={"model_max_length": 512},
        config_kwargs={"classifier_dropout": 0.0},
        batch_size=32,
    )
    params = component.to_dict()["init_parameters"]
    assert params["device"] == {"type": "single", "device": "cuda:0"}
    assert params["token"] == {"env_vars": ["ENV_VAR"], "strict": False, "type": "env_var"}
    assert (params["query_prefix"], params["query_suffix"]) == ("query_instruction: ", "\n")
    assert (params["document_prefix"], params["document_suffix"]) == ("document_instruction: ", "\n")
    assert params["model_kwargs"] == {"torch_dtype": "torch.float16"}
    assert params["config_kwargs"] == {"classifier_dropout": 0.0}
    assert (params["backend"], params["batch_size"], params["top_k"]) == ("torch", 32, 5)
    assert PixieRanker.from_dict(component.to_dict()).to_dict() == component.to_dict()


def test_from_dict_of_the_references_saved_dict(tiny_reranker: Path) -> None:
    # The reference's test_from_dict data, with the type swapped and a model that exists here.
    data = {
        "type": OUR_TYPE,
        "init_parameters": {
            "device": CPU.to_dict(),
            "model": str(tiny_reranker),
            "token": None,
            "top_k": 5,
            "query_prefix": "",
            "document_prefix": "",
            "meta_fields_to_embed": [],
            "embedding_separator": "\n",
            "scale_score": False,
            "score_threshold": 0.01,
            "trust_remote_code": False,
            "model_kwargs": {"torch_dtype": "torch.float32"},
            "tokenizer_kwargs": None,
            "config_kwargs": None,
            "backend": "torch",
            "batch_size": 32,
        },
    }
    frozen = copy.deepcopy(data)
    component = PixieRanker.from_dict(data)
    assert data == frozen
    assert component.device == CPU
    assert component.model == str(tiny_reranker)
    assert component.token is None
    assert component.top_k == 5
    assert component.query_prefix == "" and component.document_prefix == ""
    assert component.meta_fields_to_embed == []
    assert component.embedding_separator == "\n"
    assert not component.scale_score
    assert component.score_threshold == 0.01
    assert component.trust_remote_code is False
    assert component.model_kwargs == {"torch_dtype": torch.float32}
    assert component.tokenizer_kwargs is None
    assert component.config_kwargs is None
    assert component.batch_size == 32
    scorer = component.get_scorer()
    assert isinstance(scorer, PixieScorer)
    assert scorer.batch_size == 32  # batch_size honoured
    assert scorer.dtype == torch.float32


def test_from_dict_no_default_parameters() -> None:
    component = PixieRanker.from_dict({"type": OUR_TYPE, "init_parameters": {}})
    assert component.token == Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False)
    assert component.top_k == 10
    assert component.query_prefix == "" and component.document_prefix == ""
    assert component.query_suffix == "" and component.document_suffix == ""
    assert component.meta_fields_to_embed == []
    assert component.embedding_separator == "\n"
    assert component.scale_score
    assert component.score_threshold is None
    assert component.trust_remote_code is False
    assert component.model_kwargs is None and component.tokenizer_kwargs is None and component.config_kwargs is None
    assert component.backend == "torch"


def test_config_kwargs_reach_the_config(tiny_reranker: Path) -> None:
    ranker = PixieRanker(model=str(tiny_reranker), device=CPU, dtype="float32", config_kwargs={"rms_norm_eps": 1e-3})
    assert ranker.get_scorer().model.config.rms_norm_eps == 1e-3


# -- run (test_run_* / test_embed_meta* / test_prefix / test_suffix / test_scale_score_false / ...) ------------------
def test_run_invalid_top_k(ranker: PixieRanker) -> None:
    with pytest.raises(ValueError):
        ranker.run(query="test", documents=[Document(content="document")], top_k=-1)


def test_run_top_k_zero_raises(ranker: PixieRanker) -> None:
    with pytest.raises(ValueError, match="top_k must be > 0, but got 0"):
        ranker.run(query="test", documents=[Document(content="document")], top_k=0)


def test_returns_empty_list_if_no_documents_are_provided(ranker: PixieRanker) -> None:
    assert ranker.run(query="City in Germany", documents=[]) == {"documents": []}
    assert ranker.run(query="City in Germany", documents=[], top_k=-1) == {"documents": []}  # as the reference


async def test_run_async_returns_empty_list_whatever_top_k(ranker: PixieRanker) -> None:
    assert await ranker.run_async(query="City in Germany", documents=[], top_k=-1) == {"documents": []}


def test_run_scale_score_false_overrides_init(ranker: PixieRanker, tiny_scorer: PixieScorer) -> None:
    (doc,) = ranker.run(query="test", documents=[Document(content="document")], scale_score=False)["documents"]
    assert doc.score == pytest.approx(_scores(tiny_scorer, "test", ["document"], raw=True)[0], abs=1e-5)


def test_run_score_threshold_zero_overrides_init(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    ranker = PixieRanker(model=str(tiny_reranker), device=CPU, dtype="float32", score_threshold=2.0, scale_score=False)
    documents = [Document(content="first"), Document(content="second")]
    logits = _scores(tiny_scorer, "test", ["first", "second"], raw=True)
    result = ranker.run(query="test", documents=documents, score_threshold=0.0)
    assert sorted(d.score for d in result["documents"]) == pytest.approx(sorted(x for x in logits if x >= 0.0))
    assert ranker.run(query="test", documents=documents)["documents"] == [] or max(logits) >= 2.0


def test_embed_meta(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    ranker = PixieRanker(
        model=str(tiny_reranker),
        device=CPU,
        dtype="float32",
        meta_fields_to_embed=["meta_field"],
        embedding_separator="\n",
    )
    documents = [Document(content=f"document number {i}", meta={"meta_field": f"meta_value {i}"}) for i in range(5)]
    out = ranker.run(query="test", documents=documents)["documents"]
    texts = [f"meta_value {i}\ndocument number {i}" for i in range(5)]
    assert {d.content: d.score for d in out} == pytest.approx(
        dict(zip((d.content for d in documents), _scores(tiny_scorer, "test", texts))), abs=1e-5
    )


def test_embed_meta_preserves_falsy_values(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    ranker = PixieRanker(
        model=str(tiny_reranker),
        device=CPU,
        dtype="float32",
        meta_fields_to_embed=["rating", "is_available", "missing", "none_value", "empty"],
        embedding_separator="\n",
    )
    documents = [
        Document(content="document", meta={"rating": 0, "is_available": False, "none_value": None, "empty": ""})
    ]
    (doc,) = ranker.run(query="test", documents=documents)["documents"]
    assert doc.score == pytest.approx(_scores(tiny_scorer, "test", ["0\nFalse\n\ndocument"])[0], abs=1e-5)


@pytest.mark.parametrize(
    ("affixes", "query", "texts"),
    [
        (
            {"query_prefix": "query_instruction: ", "document_prefix": "document_instruction: "},
            "query_instruction: test",
            [f"document_instruction: document number {i}" for i in range(5)],
        ),
        (
            {"query_suffix": "\nquery_suffix", "document_suffix": "\ndocument_suffix"},
            "test\nquery_suffix",
            [f"document number {i}\ndocument_suffix" for i in range(5)],
        ),
    ],
    ids=["prefix", "suffix"],
)
@pytest.mark.parametrize("family", ["template", "encoder"])
def test_prefix_and_suffix_wrap_the_query_and_document_text(
    family: str, affixes: dict[str, str], query: str, texts: list[str], tiny_reranker: Path, tiny_encoder: Path
) -> None:
    model = str(tiny_reranker if family == "template" else tiny_encoder)
    scorer = PixieScorer(model, device="cpu", dtype="float32")
    ranker = PixieRanker(model=model, device=CPU, dtype="float32", **affixes)
    documents = [Document(content=f"document number {i}", meta={"meta_field": f"meta_value {i}"}) for i in range(5)]
    out = ranker.run(query="test", documents=documents)["documents"]
    # Template models: inside the PIXIE template (<Query>: {prefix}{query}{suffix}); encoders: the plain pair.
    expected = dict(zip((d.content for d in documents), scorer.score(query, texts)))
    assert {d.content: d.score for d in out} == pytest.approx(expected, abs=1e-5)
    assert [d.score for d in out] != pytest.approx(sorted(scorer.score("test", [d.content for d in documents]))[::-1])


def test_scale_score_false(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    ranker = PixieRanker(model=str(tiny_reranker), device=CPU, dtype="float32", scale_score=False)
    documents = [Document(content="document number 0"), Document(content="document number 1")]
    out = ranker.run(query="test", documents=documents)["documents"]
    logits = _scores(tiny_scorer, "test", ["document number 0", "document number 1"], raw=True)
    assert [d.score for d in out] == pytest.approx(sorted(logits, reverse=True), abs=1e-5)


def test_score_threshold(tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    texts = ["document number 0", "document number 1"]
    low, high = sorted(_scores(tiny_scorer, "test", texts, raw=True))
    cut = (low + high) / 2
    ranker = PixieRanker(model=str(tiny_reranker), device=CPU, dtype="float32", scale_score=False, score_threshold=cut)
    for _ in range(2):  # the reference runs it twice: nothing carries over between runs
        out = ranker.run(query="test", documents=[Document(content=t) for t in texts])
        assert len(out["documents"]) == 1


def test_scores_are_python_floats(ranker: PixieRanker) -> None:
    out = ranker.run(query="test", documents=[Document(content="doc 0"), Document(content="doc 1")])
    assert len(out["documents"]) == 2
    assert all(type(d.score) is float for d in out["documents"])


def test_run_deduplicates_documents(ranker: PixieRanker) -> None:
    documents = [
        Document(id="duplicate", content="keep me", score=0.9),
        Document(id="duplicate", content="drop me", score=0.1),
        Document(id="unique", content="unique"),
    ]
    result = ranker.run(query="test", documents=documents)
    assert len(result["documents"]) == 2
    assert sorted(d.content for d in result["documents"]) == ["keep me", "unique"]


def test_run_top_k_and_single_document(tiny_reranker: Path) -> None:
    ranker = PixieRanker(model=str(tiny_reranker), device=CPU, dtype="float32", top_k=2)
    docs = [Document(content=text) for text in ["Berlin", "Belgrade", "Sarajevo"]]
    out = ranker.run(query="City in Bosnia and Herzegovina", documents=docs)["documents"]
    assert len(out) == 2
    assert [d.score for d in out] == sorted((d.score for d in out), reverse=True)
    (single,) = ranker.run(query="City in Germany", documents=[Document(content="Berlin")])["documents"]
    assert isinstance(single.score, float)


# -- the real reference component: its saved dicts and pipelines load into PixieRanker ------------------------------
def _reference_kwargs(model: Path) -> dict[str, Any]:
    return {
        "model": str(model),
        "device": CPU,
        "top_k": 3,
        "query_prefix": "Question: ",
        "query_suffix": " ?",
        "document_prefix": "Passage: ",
        "document_suffix": " .",
        "meta_fields_to_embed": ["title", "rating", "empty"],
        "embedding_separator": " | ",
        "batch_size": 2,
        # float32 on both sides (the reference's model_kwargs habit), so the scores can be compared to 1e-5
        "model_kwargs": {"torch_dtype": torch.float32},
    }


DOCS = [
    Document(id="a", content="Sarajevo is the capital of Bosnia and Herzegovina.", meta={"title": "Sarajevo"}),
    Document(id="b", content="Berlin is the capital of Germany.", meta={"title": "Berlin", "rating": 0}, score=0.3),
    Document(id="b", content="Berlin, once more.", meta={"title": "Berlin", "empty": ""}, score=0.8),
    Document(id="c", content=None, meta={"title": "Belgrade"}),
    Document(id="d", content="Paris is in France.", meta={"rating": False}),
]


def test_a_saved_reference_ranker_loads_and_ranks_like_the_reference(tiny_encoder: Path) -> None:
    reference_class = _reference_class()
    reference = reference_class(**_reference_kwargs(tiny_encoder))
    reference.warm_up()  # before to_dict, which rewrites the reference's live model_kwargs in place
    data = reference.to_dict()
    ours = PixieRanker.from_dict(_swap_type(data))
    assert ours.to_dict()["init_parameters"]["backend"] == "torch"
    # the reference's own type is accepted as it is, too
    assert PixieRanker.from_dict(data).to_dict() == ours.to_dict()

    want = reference.run(query="capital of Germany", documents=copy.deepcopy(DOCS))["documents"]
    got = ours.run(query="capital of Germany", documents=DOCS)["documents"]
    # The same documents survive (id collapse by retrieval score), in the same order, with the same scores: an
    # encoder scores the plain pair, exactly the text the reference builds.
    assert [(d.id, d.content) for d in got] == [(d.id, d.content) for d in want]
    assert [d.score for d in got] == pytest.approx([d.score for d in want], abs=1e-5)


def test_a_pipeline_saved_with_the_reference_ranker_loads_with_the_type_swapped(
    tiny_encoder: Path, tiny_reranker: Path
) -> None:
    reference_class = _reference_class()
    store = InMemoryDocumentStore()
    store.write_documents([Document(content=t) for t in ["Berlin is in Germany", "Paris is in France", "Oslo"]])
    p = Pipeline()
    p.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=3))
    p.add_component("ranker", reference_class(**_reference_kwargs(tiny_reranker)))
    p.connect("retriever.documents", "ranker.documents")
    yaml_text = p.dumps()
    assert REFERENCE_TYPE in yaml_text

    loaded = Pipeline.loads(yaml_text.replace(REFERENCE_TYPE, OUR_TYPE), allowed_modules=["pixie_integrations"])
    ranker = loaded.get_component("ranker")
    assert isinstance(ranker, PixieRanker)
    assert (ranker.query_prefix, ranker.document_suffix, ranker.batch_size) == ("Question: ", " .", 2)
    query = "Where is Berlin?"
    out = loaded.run({"retriever": {"query": query}, "ranker": {"query": query}})["ranker"]["documents"]
    assert 1 <= len(out) <= 3
    assert ranker.get_scorer().dtype == torch.float32
    expected = ranker.get_scorer().score("Question: " + query + " ?", [f"Passage: {d.content} ." for d in out])
    assert [d.score for d in out] == pytest.approx(expected, abs=1e-5)
