"""PixieRanker in real Haystack pipelines, scored by the real PixieScorer over the tiny checkpoint (no mocks)."""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network: keep Haystack's telemetry quiet

import torch
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.core.errors import PipelineRuntimeError
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice, Secret

from pixie_integrations import DEFAULT_INSTRUCTION, DEFAULT_MODEL, PixieScorer, format_document, format_query
from pixie_integrations.haystack import PixieRanker
from pixie_integrations.install import install_hint

QUERY = "Which company analyses satellite data for agriculture and defence?"
TEXTS = [
    "A satellite imaging company analyses earth observation data for agriculture, defence and the ocean.",
    "Rerankers are evaluated with NDCG at cut-offs 1, 3, 5 and 10 over a first-stage shortlist.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "Satellite data helps agriculture: crop monitoring from orbit, analysed by a company in Korea.",
    "Defence agencies buy satellite imagery; the company analyses it with AI.",
    "Ocean, agriculture and defence: three markets for earth observation data.",
]


@pytest.fixture
def cpu_kwargs(tiny_reranker: Path) -> dict[str, Any]:
    return {"model": str(tiny_reranker), "device": ComponentDevice.from_str("cpu"), "dtype": "float32"}


@pytest.fixture
def docs() -> list[Document]:
    return [Document(content=t, meta={"n": i}) for i, t in enumerate(TEXTS)]


def _expected(scorer: PixieScorer, query: str, texts: list[str], *, raw: bool = False, **kw: Any) -> list[float]:
    return sorted(scorer.score(query, texts, raw=raw, **kw), reverse=True)


def _pipeline(ranker: PixieRanker, docs: list[Document]) -> Pipeline:
    store = InMemoryDocumentStore()
    store.write_documents(docs)
    p = Pipeline()
    p.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    p.add_component("ranker", ranker)
    p.connect("retriever.documents", "ranker.documents")
    return p


def _inputs(query: str = QUERY, **ranker: Any) -> dict[str, Any]:
    return {"retriever": {"query": query}, "ranker": {"query": query, **ranker}}


# -- packaging ----------------------------------------------------------------------------------------------------
def test_core_never_imports_haystack_and_missing_extra_names_the_install_command() -> None:
    code = (
        "import sys\n"
        "import pixie_integrations\n"
        "assert 'haystack' not in sys.modules, 'importing the core imported haystack'\n"
        "sys.modules['haystack'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    import pixie_integrations.haystack\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert install_hint("haystack") in out.stdout


def test_run_and_run_async_have_the_same_signature() -> None:
    run = inspect.signature(PixieRanker.run)
    assert run == inspect.signature(PixieRanker.run_async)
    assert list(run.parameters) == [
        "self",
        "query",
        "documents",
        "top_k",
        "scale_score",
        "score_threshold",
        *("long_documents", "chunk_tokens", "chunk_overlap", "max_chunks", "aggregate", "chunk_boundary"),
    ]
    init = inspect.signature(PixieRanker.__init__)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in init.parameters.items() if name != "self")
    assert init.parameters["model"].default == DEFAULT_MODEL
    assert init.parameters["top_k"].default == 10
    assert init.parameters["scale_score"].default is True
    assert init.parameters["embedding_separator"].default == "\n"


# -- init validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [0, -1])
def test_init_rejects_non_positive_top_k(top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k"):
        PixieRanker(top_k=top_k)


def test_init_rejects_bad_settings_early() -> None:
    with pytest.raises(ValueError, match="dtype"):
        PixieRanker(dtype="float8")
    with pytest.raises(ValueError, match="single device"):
        PixieRanker(device=ComponentDevice.from_multiple(_device_map()))
    with pytest.raises(ValueError, match="disagree"):
        PixieRanker(dtype="float32", model_kwargs={"torch_dtype": torch.float16})
    with pytest.raises(ValueError, match="batch_size"):
        PixieRanker(batch_size=0)


def test_a_dtype_in_model_kwargs_sets_the_weights_dtype(tiny_reranker: Path) -> None:
    cpu = ComponentDevice.from_str("cpu")
    ranker = PixieRanker(model=str(tiny_reranker), device=cpu, model_kwargs={"torch_dtype": torch.bfloat16})
    ranker.warm_up()
    assert ranker.scorer is not None and ranker.scorer.dtype is torch.bfloat16
    assert next(ranker.scorer.model.parameters()).dtype is torch.bfloat16
    assert ranker.model_kwargs == {"torch_dtype": torch.bfloat16}  # the user's dict is left as given


def _device_map() -> Any:
    from haystack.utils.device import Device, DeviceMap

    return DeviceMap({"layer.0": Device.cpu(), "layer.1": Device.cpu()})


# -- scoring ------------------------------------------------------------------------------------------------------
def test_run_gives_the_scorers_scores_best_first_as_python_floats(
    cpu_kwargs: dict[str, Any], docs: list[Document], tiny_scorer: PixieScorer
) -> None:
    ranker = PixieRanker(**cpu_kwargs, top_k=5)
    ranker.warm_up()
    out = ranker.run(query=QUERY, documents=docs)["documents"]

    expected = _expected(tiny_scorer, QUERY, TEXTS)
    assert len({round(s, 4) for s in expected}) > 3, "tiny model scores should spread"
    assert [d.score for d in out] == pytest.approx(expected[:5], abs=1e-5)
    assert all(type(d.score) is float for d in out)
    assert all(0.0 < d.score < 1.0 for d in out)
    # each output document carries its own text's score
    by_text = dict(zip(TEXTS, tiny_scorer.score(QUERY, TEXTS), strict=True))
    assert all(d.score == pytest.approx(by_text[d.content], abs=1e-5) for d in out)


def test_warm_up_is_idempotent_and_shares_the_loaded_model(
    cpu_kwargs: dict[str, Any], tiny_scorer: PixieScorer
) -> None:
    ranker = PixieRanker(**cpu_kwargs)
    assert ranker.scorer is None
    ranker.warm_up()
    first = ranker.scorer
    ranker.warm_up()
    assert ranker.scorer is first
    assert first is not None and first.model is tiny_scorer.model  # same weights as the core's scorer
    other = PixieRanker(**cpu_kwargs)
    other.warm_up()
    assert other.scorer is not None and other.scorer.model is first.model


def test_run_before_warm_up_loads_lazily(cpu_kwargs: dict[str, Any], docs: list[Document]) -> None:
    ranker = PixieRanker(**cpu_kwargs)
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert ranker.scorer is not None
    assert len(out) == len(docs)


def test_empty_input_gives_empty_output(cpu_kwargs: dict[str, Any]) -> None:
    ranker = PixieRanker(**cpu_kwargs)
    assert ranker.run(query=QUERY, documents=[]) == {"documents": []}


def test_caller_documents_are_untouched_and_outputs_are_copies(
    cpu_kwargs: dict[str, Any], docs: list[Document]
) -> None:
    docs[0] = Document(content=TEXTS[0], meta={"n": 0}, score=12.5)  # a retriever score
    before = copy.deepcopy(docs)
    out = PixieRanker(**cpu_kwargs).run(query=QUERY, documents=docs)["documents"]
    assert docs == before
    assert docs[0].score == 12.5
    assert not any(o is d for o in out for d in docs)
    by_id = {d.id: d for d in docs}
    for o in out:  # everything but the score is carried over
        src = by_id[o.id]
        assert (o.content, o.meta) == (src.content, src.meta)
        assert o.score != src.score


def test_run_time_values_override_init_values_even_when_falsy(
    cpu_kwargs: dict[str, Any], docs: list[Document], tiny_scorer: PixieScorer
) -> None:
    ranker = PixieRanker(**cpu_kwargs, top_k=2, scale_score=True, score_threshold=1.5)
    ranker.warm_up()
    assert ranker.run(query=QUERY, documents=docs)["documents"] == []  # no probability reaches 1.5

    # score_threshold=0.0 must replace 1.5 (the reference ranker's `x or self.x` bug ignored it)
    out = ranker.run(query=QUERY, documents=docs, score_threshold=0.0, top_k=len(docs))["documents"]
    assert len(out) == len(docs)

    # scale_score=False must give logits, and the threshold then applies to logits
    logits = _expected(tiny_scorer, QUERY, TEXTS, raw=True)
    assert max(logits) > 1.0  # not probabilities
    out = ranker.run(query=QUERY, documents=docs, scale_score=False, score_threshold=-100.0, top_k=8)["documents"]
    assert [d.score for d in out] == pytest.approx(logits, abs=1e-4)
    middle = (logits[2] + logits[3]) / 2
    out = ranker.run(query=QUERY, documents=docs, scale_score=False, score_threshold=middle, top_k=8)["documents"]
    assert [d.score for d in out] == pytest.approx(logits[:3], abs=1e-4)

    # and an init scale_score=False is overridden by a run-time True
    raw_ranker = PixieRanker(**cpu_kwargs, scale_score=False)
    probs = raw_ranker.run(query=QUERY, documents=docs, scale_score=True)["documents"]
    assert [d.score for d in probs] == pytest.approx(_expected(tiny_scorer, QUERY, TEXTS), abs=1e-5)


def test_threshold_is_applied_before_top_k(
    cpu_kwargs: dict[str, Any], docs: list[Document], tiny_scorer: PixieScorer
) -> None:
    expected = _expected(tiny_scorer, QUERY, TEXTS)
    threshold = (expected[4] + expected[5]) / 2  # exactly five documents pass
    ranker = PixieRanker(**cpu_kwargs, score_threshold=threshold)
    assert len(ranker.run(query=QUERY, documents=docs)["documents"]) == 5
    out = ranker.run(query=QUERY, documents=docs, top_k=3)["documents"]
    assert [d.score for d in out] == pytest.approx(expected[:3], abs=1e-5)


@pytest.mark.parametrize("top_k", [0, -3])
def test_run_rejects_non_positive_top_k(cpu_kwargs: dict[str, Any], docs: list[Document], top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k"):
        PixieRanker(**cpu_kwargs).run(query=QUERY, documents=docs, top_k=top_k)


def test_top_k_larger_than_input_returns_all(cpu_kwargs: dict[str, Any], docs: list[Document]) -> None:
    assert len(PixieRanker(**cpu_kwargs, top_k=100).run(query=QUERY, documents=docs)["documents"]) == len(docs)


def test_documents_with_the_same_id_keep_the_higher_retrieval_score(
    cpu_kwargs: dict[str, Any], tiny_scorer: PixieScorer
) -> None:
    low = Document(id="dup", content=TEXTS[0], meta={"from": "bm25"}, score=0.1)
    high = Document(id="dup", content=TEXTS[0], meta={"from": "embedding"}, score=0.9)
    other = Document(content=TEXTS[2])
    out = PixieRanker(**cpu_kwargs).run(query=QUERY, documents=[low, other, high])["documents"]
    assert sorted(d.id for d in out) == sorted(["dup", other.id])
    kept = next(d for d in out if d.id == "dup")
    assert kept.meta == {"from": "embedding"}

    # Same id, different texts: the reference ranker keeps the higher *retrieval* score, before reranking, so the
    # survivor is the same document as there even when the other one would score higher here.
    a, b = tiny_scorer.score(QUERY, [TEXTS[0], TEXTS[2]])
    worse, better = (TEXTS[0], TEXTS[2]) if a < b else (TEXTS[2], TEXTS[0])
    docs = [Document(id="x", content=better, score=0.2), Document(id="x", content=worse, score=0.7)]
    (out_doc,) = PixieRanker(**cpu_kwargs).run(query=QUERY, documents=docs)["documents"]
    assert out_doc.content == worse
    assert out_doc.score == pytest.approx(min(a, b), abs=1e-5)
    # no retrieval scores (or equal ones): the first stays
    docs = [Document(id="x", content=worse), Document(id="x", content=better)]
    (out_doc,) = PixieRanker(**cpu_kwargs).run(query=QUERY, documents=docs)["documents"]
    assert out_doc.content == worse


def test_equal_scores_keep_input_order(cpu_kwargs: dict[str, Any]) -> None:
    # different ids, same text: equal scores, so a stable sort keeps the input order
    same = [Document(content=TEXTS[1], meta={"n": i}) for i in range(4)]
    out = PixieRanker(**cpu_kwargs).run(query=QUERY, documents=same)["documents"]
    assert [d.meta["n"] for d in out] == [0, 1, 2, 3]
    assert len({d.score for d in out}) == 1


def test_meta_fields_are_embedded_before_the_content(cpu_kwargs: dict[str, Any], tiny_scorer: PixieScorer) -> None:
    doc = Document(content="body text", meta={"title": "Satellites", "year": 0, "empty": "", "none": None})
    ranker = PixieRanker(
        **cpu_kwargs, meta_fields_to_embed=["title", "year", "empty", "none", "missing"], embedding_separator=" | "
    )
    (out,) = ranker.run(query=QUERY, documents=[doc])["documents"]
    # As the reference ranker: missing and None are skipped; 0, False and "" are values.
    assert out.score == pytest.approx(tiny_scorer.score(QUERY, ["Satellites | 0 |  | body text"])[0], abs=1e-5)
    assert out.score != pytest.approx(tiny_scorer.score(QUERY, ["body text"])[0], abs=1e-5)


def test_content_none_counts_as_empty_content(cpu_kwargs: dict[str, Any], tiny_scorer: PixieScorer) -> None:
    ranker = PixieRanker(**cpu_kwargs, meta_fields_to_embed=["title"])
    out = ranker.run(query=QUERY, documents=[Document(content=None, meta={"title": "Orbit"}), Document()])
    scores = sorted((d.score for d in out["documents"]), reverse=True)
    # the reference ranker's `doc.content or ""`: the meta values, the separator, nothing
    assert scores == pytest.approx(_expected(tiny_scorer, QUERY, ["Orbit\n", ""]), abs=1e-5)


def test_instruction_reaches_the_prompt(
    cpu_kwargs: dict[str, Any], docs: list[Document], tiny_scorer: PixieScorer
) -> None:
    instruction = "Given an aerospace question, retrieve passages about satellite operators"
    out = PixieRanker(**cpu_kwargs, instruction=instruction, top_k=8).run(query=QUERY, documents=docs)["documents"]
    expected = _expected(tiny_scorer, QUERY, TEXTS, instruction=instruction)
    assert [d.score for d in out] == pytest.approx(expected, abs=1e-5)
    assert expected != pytest.approx(_expected(tiny_scorer, QUERY, TEXTS, instruction=DEFAULT_INSTRUCTION), abs=1e-5)


def test_non_documents_are_rejected(cpu_kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="Document"):
        PixieRanker(**cpu_kwargs).run(query=QUERY, documents=["plain text"])  # type: ignore[list-item]


# -- async --------------------------------------------------------------------------------------------------------
async def test_run_async_matches_run_and_keeps_the_loop_free(cpu_kwargs: dict[str, Any]) -> None:
    ranker = PixieRanker(**cpu_kwargs, top_k=5, scale_score=False)
    await ranker.warm_up_async()
    many = [Document(content=f"{TEXTS[i % len(TEXTS)]} ({i})") for i in range(160)]
    ticks = 0
    task = asyncio.create_task(ranker.run_async(query=QUERY, documents=many, scale_score=True))
    while not task.done():
        ticks += 1
        await asyncio.sleep(0)
    result = await task
    assert ticks > 5, "scoring blocked the event loop"
    sync = ranker.run(query=QUERY, documents=many, scale_score=True)
    assert [d.id for d in result["documents"]] == [d.id for d in sync["documents"]]
    assert [d.score for d in result["documents"]] == pytest.approx([d.score for d in sync["documents"]], abs=1e-5)
    assert await ranker.run_async(query=QUERY, documents=[]) == {"documents": []}
    with pytest.raises(ValueError, match="top_k"):
        await ranker.run_async(query=QUERY, documents=many, top_k=0)


# -- pipelines ----------------------------------------------------------------------------------------------------
def _check_reranked(result: dict[str, Any], scorer: PixieScorer, top_k: int) -> list[Document]:
    retrieved = result["retriever"]["documents"]
    ranked = result["ranker"]["documents"]
    assert 3 < len(retrieved) <= 6
    expected = _expected(scorer, QUERY, [d.content for d in retrieved])[:top_k]
    assert [d.score for d in ranked] == pytest.approx(expected, abs=1e-5)
    assert {d.id for d in ranked} <= {d.id for d in retrieved}
    assert all(d.content is not None for d in ranked)
    return ranked


def test_pipeline_retriever_then_ranker(
    cpu_kwargs: dict[str, Any], docs: list[Document], tiny_scorer: PixieScorer
) -> None:
    p = _pipeline(PixieRanker(**cpu_kwargs, top_k=3), docs)
    first = p.run(_inputs(), include_outputs_from={"retriever"})
    ranked = _check_reranked(first, tiny_scorer, 3)
    assert len(ranked) == 3
    # a second run (warm_up called again) reuses the scorer and gives the same answer
    scorer = p.get_component("ranker").scorer
    second = p.run(_inputs(), include_outputs_from={"retriever"})
    assert p.get_component("ranker").scorer is scorer
    assert [d.id for d in second["ranker"]["documents"]] == [d.id for d in ranked]
    # run-time inputs reach the ranker through the pipeline
    raw = p.run(_inputs(scale_score=False, top_k=4), include_outputs_from={"retriever"})
    logits = _expected(tiny_scorer, QUERY, [d.content for d in raw["retriever"]["documents"]], raw=True)[:4]
    assert [d.score for d in raw["ranker"]["documents"]] == pytest.approx(logits, abs=1e-4)


async def test_pipeline_run_async(cpu_kwargs: dict[str, Any], docs: list[Document], tiny_scorer: PixieScorer) -> None:
    p = _pipeline(PixieRanker(**cpu_kwargs, top_k=3), docs)
    result = await p.run_async(_inputs(), include_outputs_from={"retriever"})
    ranked = _check_reranked(result, tiny_scorer, 3)
    sync = p.run(_inputs(), include_outputs_from={"retriever"})
    assert [d.id for d in sync["ranker"]["documents"]] == [d.id for d in ranked]


# -- serialization ------------------------------------------------------------------------------------------------
def test_to_dict_from_dict_round_trip(cpu_kwargs: dict[str, Any]) -> None:
    ranker = PixieRanker(
        **cpu_kwargs,
        top_k=4,
        instruction="Judge aerospace relevance",
        meta_fields_to_embed=["title"],
        embedding_separator=" - ",
        scale_score=False,
        score_threshold=0.0,
        max_length=512,
        batch_size=8,
        token_budget=4096,
        model_kwargs={"attn_implementation": "sdpa", "torch_dtype": torch.float32},
        tokenizer_kwargs={"use_fast": True},
    )
    data = ranker.to_dict()
    params = data["init_parameters"]
    assert data["type"] == "haystack_integrations.components.rankers.pixie.PixieRanker"
    assert params["device"] == {"type": "single", "device": "cpu"}
    assert params["token"] == {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"], "strict": False}
    assert params["model_kwargs"]["torch_dtype"] == "torch.float32"
    assert ranker.model_kwargs["torch_dtype"] is torch.float32  # serializing did not mutate the live kwargs
    assert (params["dtype"], params["score_threshold"], params["scale_score"]) == ("float32", 0.0, False)

    frozen = copy.deepcopy(data)
    restored = PixieRanker.from_dict(data)
    assert data == frozen  # from_dict left its input alone
    assert restored.to_dict() == data
    assert restored.model_kwargs == {"attn_implementation": "sdpa", "torch_dtype": torch.float32}
    assert restored.device == ComponentDevice.from_str("cpu")
    assert isinstance(restored.token, Secret)


def test_default_device_is_not_pinned_in_the_yaml() -> None:
    assert PixieRanker().to_dict()["init_parameters"]["device"] is None


def test_pipeline_survives_dumps_and_loads_with_the_allowlist(
    cpu_kwargs: dict[str, Any], docs: list[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak_me")
    p = _pipeline(PixieRanker(**cpu_kwargs, top_k=3, instruction="Judge satellite relevance"), docs)
    yaml = p.dumps()
    assert "hf_do_not_leak_me" not in yaml
    assert "HF_TOKEN" in yaml and "haystack_integrations.components.rankers.pixie.PixieRanker" in yaml

    # Haystack's default allow-list trusts haystack_integrations: no allowed_modules needed.
    monkeypatch.delenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", raising=False)
    loaded = Pipeline.loads(yaml)
    ranker = loaded.get_component("ranker")
    assert isinstance(ranker, PixieRanker)
    assert ranker.instruction == "Judge satellite relevance"
    before = p.run(_inputs())["ranker"]["documents"]
    after = loaded.run(_inputs())["ranker"]["documents"]  # the in-memory store is shared by index name
    assert len(before) == 3
    assert [(d.id, d.score) for d in after] == [(d.id, d.score) for d in before]

    with_old_allowlist = Pipeline.loads(yaml, allowed_modules=["pixie_integrations"])  # what older docs said
    assert [d.id for d in with_old_allowlist.run(_inputs())["ranker"]["documents"]] == [d.id for d in before]


_LEGACY_TYPE = "pixie_integrations.haystack.PixieRanker"  # what earlier versions saved


def _load_in_a_fresh_process(saved: Path, first: str, load: str, **env: str) -> subprocess.CompletedProcess[str]:
    code = f"""
{first}
from haystack import Document, Pipeline
p = {load.format(yaml=f"open({str(saved)!r}).read()")}
docs = [Document(content="Berlin is in Germany"), Document(content="Paris is in France")]
print(len(p.run({{"ranker": {{"query": "German city", "documents": docs}}}})["ranker"]["documents"]))
print("haystack_integrations.components.rankers.pixie.PixieRanker" in p.dumps())
"""
    clean = {k: v for k, v in os.environ.items() if k != "HAYSTACK_DESERIALIZATION_ALLOWLIST"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120, env={**clean, **env}
    )


@pytest.mark.parametrize(
    ("first", "load", "env"),
    [
        ("", "Pipeline.loads({yaml}, allowed_modules=['pixie_integrations'])", {}),
        ("", "Pipeline.loads({yaml})", {"HAYSTACK_DESERIALIZATION_ALLOWLIST": "pixie_integrations.*"}),
        # The default allow-list, in a process that imported the ranker (as one that builds pipelines has).
        ("import haystack_integrations.components.rankers.pixie", "Pipeline.loads({yaml})", {}),
        ("from pixie_integrations.haystack import PixieRanker", "Pipeline.loads({yaml})", {}),
    ],
    ids=["allowed_modules", "env-allowlist", "default-after-import", "default-after-core-import"],
)
def test_pipelines_saved_under_the_old_type_still_load(
    first: str, load: str, env: dict[str, str], tiny_reranker: Path, tmp_path: Path
) -> None:
    p = Pipeline()
    p.add_component("ranker", PixieRanker(model=str(tiny_reranker), device=ComponentDevice.from_str("cpu"), top_k=1))
    saved = tmp_path / "old.yaml"
    saved.write_text(p.dumps().replace("haystack_integrations.components.rankers.pixie.PixieRanker", _LEGACY_TYPE))
    assert _LEGACY_TYPE in saved.read_text()
    result = _load_in_a_fresh_process(saved, first, load, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "True"]  # it runs, and saves again under the new type


def test_old_type_in_a_process_that_never_imported_the_ranker_says_what_to_allow(
    tiny_reranker: Path, tmp_path: Path
) -> None:
    # Haystack checks its allow-list before importing anything: the documented way is allowed_modules.
    saved = tmp_path / "old.yaml"
    data = PixieRanker(model=str(tiny_reranker)).to_dict()
    p = Pipeline.from_dict({"components": {"ranker": {**data}}, "connections": []})
    saved.write_text(p.dumps().replace("haystack_integrations.components.rankers.pixie.PixieRanker", _LEGACY_TYPE))
    result = _load_in_a_fresh_process(saved, "", "Pipeline.loads({yaml})")
    assert result.returncode != 0
    assert "allowed_modules=['pixie_integrations.haystack']" in result.stderr


def test_from_dict_takes_the_old_type(tiny_reranker: Path) -> None:
    data = {**PixieRanker(model=str(tiny_reranker), top_k=2).to_dict(), "type": _LEGACY_TYPE}
    restored = PixieRanker.from_dict(data)
    assert restored.top_k == 2 and data["type"] == _LEGACY_TYPE  # the caller's dict is left as it was


def test_a_token_value_refuses_to_serialize(cpu_kwargs: dict[str, Any], docs: list[Document]) -> None:
    kwargs = {**cpu_kwargs, "token": Secret.from_token("hf_plain_value")}
    with pytest.raises(ValueError, match="Cannot serialize token-based secret"):
        PixieRanker(**kwargs).to_dict()
    with pytest.raises(ValueError, match="Cannot serialize token-based secret"):
        _pipeline(PixieRanker(**kwargs), docs).dumps()
    # it still works for running: a token for a local folder is simply not needed
    assert math.isfinite(PixieRanker(**kwargs).run(query=QUERY, documents=docs)["documents"][0].score)


# -- the example --------------------------------------------------------------------------------------------------
def test_example_runs_offline_with_tiny(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "haystack_rerank.py"
    spec = importlib.util.spec_from_file_location("haystack_rerank_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", [str(path), "--tiny", "--top-k", "2"])
    assert example.main() == 0
    out = capsys.readouterr().out
    assert "the ranker kept:" in out
    assert "Async run gives the same ranking: True" in out
    assert "token value inside: False) gives the same ranking: True" in out


# -- remote scoring: PixieRanker(api_base_url=...) against real servers on loopback --------------------------------
START_TIMEOUT_S = 20.0
REMOTE_INSTRUCTION = "Given an aerospace question, retrieve passages about satellite operators"
STAND_IN_MODEL = "stand-in/pixie-seq-cls"


def _needs_serving() -> None:
    for name in ("fastapi", "httpx", "uvicorn"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def server_url(tiny_scorer: PixieScorer) -> Iterator[str]:
    """``pixie-rerank serve``'s app around the tiny float32 CPU scorer, serving the model under its folder path."""
    _needs_serving()
    from pixie_integrations.serving import create_app, serve_in_thread

    app = create_app(tiny_scorer, served_model_name=tiny_scorer.model_name)
    with serve_in_thread(app, start_timeout=START_TIMEOUT_S) as url:
        yield url


@pytest.fixture
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXIE_API_KEY", raising=False)


def _forbid_local_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, a PixieRanker that tries to load a model in this process fails the test."""
    import pixie_integrations.haystack as module

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a PixieRanker with api_base_url must not load a local model")

    monkeypatch.setattr(module, "PixieScorer", refuse)


def _remote(url: str, tiny_reranker: Path, **kwargs: Any) -> PixieRanker:
    return PixieRanker(model=str(tiny_reranker), api_base_url=url, **kwargs)


def _ranked(result: dict[str, Any]) -> list[tuple[str, float]]:
    return [(d.id, d.score) for d in result["ranker"]["documents"]]


def _assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]], abs: float = 1e-6) -> None:
    assert got, "nothing ranked"
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=abs)
    assert all(type(s) is float for _, s in got)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_remote_parameters_default_to_local_scoring() -> None:
    init = inspect.signature(PixieRanker.__init__)
    assert init.parameters["api_base_url"].default is None
    assert init.parameters["api"].default == "pixie"
    env_key = {"type": "env_var", "env_vars": ["PIXIE_API_KEY"], "strict": False}
    assert init.parameters["api_key"].default.to_dict() == env_key
    params = PixieRanker().to_dict()["init_parameters"]
    assert (params["api_base_url"], params["api"], params["api_key"]) == (None, "pixie", env_key)


def test_remote_init_refuses_settings_the_server_would_ignore(tiny_reranker: Path) -> None:
    _needs_serving()
    url = "http://127.0.0.1:8000"
    for setting in (
        {"device": ComponentDevice.from_str("cpu")},
        {"dtype": "float32"},
        {"max_length": 128},
        {"batch_size": 4},
        {"token_budget": 1024},
        {"model_kwargs": {"attn_implementation": "sdpa"}},
        {"tokenizer_kwargs": {"use_fast": True}},
        {"trust_remote_code": True},
    ):
        (name,) = setting
        with pytest.raises(ValueError, match=f"^{name} only apply to a model loaded in this process"):
            _remote(url, tiny_reranker, **setting)
    with pytest.raises(ValueError, match="api must be one of"):
        _remote(url, tiny_reranker, api="tei")
    with pytest.raises(ValueError, match="api must be one of"):
        PixieRanker(api="tei")
    with pytest.raises(ValueError, match="only applies with api_base_url"):
        PixieRanker(api="vllm")
    with pytest.raises(ValueError, match="api_base_url must be an http"):
        PixieRanker(api_base_url="127.0.0.1:8000")
    with pytest.raises(TypeError, match="Secret"):
        _remote(url, tiny_reranker, api_key="plain text")
    # the HF token (whose default is env var names) is simply unused; building sends no request
    ranker = _remote(url, tiny_reranker, token=Secret.from_env_var("HF_TOKEN", strict=False), api="vllm", api_key=None)
    assert (ranker.api_base_url, ranker.api, ranker.api_key, ranker.scorer) == (url, "vllm", None, None)


def test_remote_scoring_without_the_serve_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # None in sys.modules: the package counts as missing
    for name in list(sys.modules):
        if name == "pixie_integrations.serving" or name.startswith("pixie_integrations.serving."):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=re.escape(install_hint("serve"))):
        PixieRanker(api_base_url="http://127.0.0.1:8000")
    assert PixieRanker().api_base_url is None  # local scoring does not need it


def test_remote_pipeline_equals_a_local_one(
    server_url: str,
    cpu_kwargs: dict[str, Any],
    docs: list[Document],
    tiny_reranker: Path,
    no_api_key: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pixie_integrations.serving import RemoteScorer

    local = _pipeline(PixieRanker(**cpu_kwargs, top_k=3, instruction=REMOTE_INSTRUCTION), docs)
    local.warm_up()
    local_plain = PixieRanker(**cpu_kwargs, top_k=8)
    local_plain.warm_up()
    _forbid_local_models(monkeypatch)
    ranker = _remote(server_url, tiny_reranker, top_k=3, instruction=REMOTE_INSTRUCTION)
    remote = _pipeline(ranker, docs)

    got = remote.run(_inputs(), include_outputs_from={"retriever"})
    want = local.run(_inputs(), include_outputs_from={"retriever"})
    assert [d.id for d in got["retriever"]["documents"]] == [d.id for d in want["retriever"]["documents"]]
    _assert_same(_ranked(got), _ranked(want))
    assert len(_ranked(got)) == 3

    scorer = ranker.scorer
    assert isinstance(scorer, RemoteScorer)
    assert (scorer.base_url, scorer.api, scorer.model_name) == (server_url, "pixie", str(tiny_reranker))
    assert scorer.instruction == REMOTE_INSTRUCTION
    assert remote.run(_inputs()) and ranker.scorer is scorer  # warm_up at every run keeps the one client

    # run-time overrides go through unchanged, scale_score=False included (the server's raw logits)
    raw = _ranked(remote.run(_inputs(scale_score=False, top_k=5)))
    _assert_same(raw, _ranked(local.run(_inputs(scale_score=False, top_k=5))))
    probabilities = _ranked(remote.run(_inputs(top_k=5)))
    assert [1 / (1 + math.exp(-s)) for _, s in raw] == pytest.approx([s for _, s in probabilities], abs=1e-6)
    middle = (probabilities[1][1] + probabilities[2][1]) / 2
    assert [i for i, _ in _ranked(remote.run(_inputs(score_threshold=middle, top_k=5)))] == [
        i for i, _ in probabilities[:2]
    ]

    # outside a pipeline too, and the default instruction when none is set
    plain = _remote(server_url, tiny_reranker, top_k=8)
    _assert_same(
        [(d.id, d.score) for d in plain.run(query=QUERY, documents=docs)["documents"]],
        [(d.id, d.score) for d in local_plain.run(query=QUERY, documents=docs)["documents"]],
    )
    assert plain.scorer.instruction == DEFAULT_INSTRUCTION  # type: ignore[union-attr]
    assert plain.run(query=QUERY, documents=[]) == {"documents": []}


async def test_remote_run_async_equals_local(
    server_url: str,
    cpu_kwargs: dict[str, Any],
    docs: list[Document],
    tiny_reranker: Path,
    no_api_key: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = PixieRanker(**cpu_kwargs, top_k=4, scale_score=False)
    local.warm_up()
    _forbid_local_models(monkeypatch)
    ranker = _remote(server_url, tiny_reranker, top_k=4, scale_score=False)
    await ranker.warm_up_async()
    got = await ranker.run_async(query=QUERY, documents=docs)
    want = local.run(query=QUERY, documents=docs)
    _assert_same([(d.id, d.score) for d in got["documents"]], [(d.id, d.score) for d in want["documents"]])

    p = _pipeline(_remote(server_url, tiny_reranker, top_k=3), docs)
    result = await p.run_async(_inputs())
    _assert_same(_ranked(result), _ranked(p.run(_inputs())))


def test_remote_pipeline_survives_dumps_and_loads(
    server_url: str,
    cpu_kwargs: dict[str, Any],
    docs: list[Document],
    tiny_reranker: Path,
    no_api_key: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = _pipeline(PixieRanker(**cpu_kwargs, top_k=3), docs)
    want = _ranked(local.run(_inputs()))
    _forbid_local_models(monkeypatch)
    p = _pipeline(_remote(server_url, tiny_reranker, top_k=3), docs)
    yaml = p.dumps()
    assert server_url in yaml and "PIXIE_API_KEY" in yaml and "rankers.pixie.PixieRanker" in yaml

    loaded = Pipeline.loads(yaml)
    ranker = loaded.get_component("ranker")
    assert isinstance(ranker, PixieRanker)
    assert (ranker.api_base_url, ranker.api, ranker.model) == (server_url, "pixie", str(tiny_reranker))
    assert ranker.api_key == Secret.from_env_var("PIXIE_API_KEY", strict=False)
    assert ranker.to_dict() == p.get_component("ranker").to_dict()
    _assert_same(_ranked(loaded.run(_inputs())), want)
    _assert_same(_ranked(p.run(_inputs())), want)

    vllm = _remote(server_url, tiny_reranker, api="vllm", api_key=Secret.from_env_var(["MY_KEY", "PIXIE_API_KEY"]))
    restored = PixieRanker.from_dict(vllm.to_dict())
    assert (restored.api, restored.api_key) == ("vllm", vllm.api_key)


def test_api_key_is_sent_from_the_environment_and_never_saved(
    tiny_scorer: PixieScorer, tiny_reranker: Path, docs: list[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_serving()
    from pixie_integrations.serving import RemoteScorerError, create_app, serve_in_thread

    secret = "s3cret-rerank-key"
    want = sorted(tiny_scorer.score(QUERY, TEXTS), reverse=True)[:3]
    with serve_in_thread(
        create_app(tiny_scorer, served_model_name=tiny_scorer.model_name, api_key=secret), start_timeout=START_TIMEOUT_S
    ) as url:
        monkeypatch.setenv("PIXIE_API_KEY", secret)
        p = _pipeline(_remote(url, tiny_reranker, top_k=3), docs)
        got = _ranked(p.run(_inputs()))
        assert len(got) == 3
        yaml = p.dumps()
        assert secret not in yaml and "PIXIE_API_KEY" in yaml
        loaded = Pipeline.loads(yaml)
        _assert_same(_ranked(loaded.run(_inputs())), got)

        # any variable name; the key itself is never in the dict
        monkeypatch.delenv("PIXIE_API_KEY")
        monkeypatch.setenv("MY_RERANK_KEY", secret)
        custom = _remote(url, tiny_reranker, top_k=3, api_key=Secret.from_env_var("MY_RERANK_KEY"))
        scores = [d.score for d in custom.run(query=QUERY, documents=docs)["documents"]]
        assert scores == pytest.approx(want, abs=1e-6)
        assert secret not in str(custom.to_dict()) and "MY_RERANK_KEY" in str(custom.to_dict())

        # no key: warm_up sends nothing, run reports the server's refusal
        keyless = _remote(url, tiny_reranker)
        keyless.warm_up()
        with pytest.raises(RemoteScorerError, match="HTTP 401.*API key") as info:
            keyless.run(query=QUERY, documents=docs)
        assert info.value.status_code == 401

        # a key value runs, but (by Haystack's design) refuses to be saved
        plain = _remote(url, tiny_reranker, top_k=3, api_key=Secret.from_token(secret))
        scores = [d.score for d in plain.run(query=QUERY, documents=docs)["documents"]]
        assert scores == pytest.approx(want, abs=1e-6)
        with pytest.raises(ValueError, match="Cannot serialize token-based secret"):
            plain.to_dict()


async def test_a_server_that_is_not_running_fails_at_run_not_at_warm_up(
    tiny_reranker: Path, docs: list[Document], no_api_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_serving()
    from pixie_integrations.serving import RemoteScorerError

    _forbid_local_models(monkeypatch)
    url = f"http://127.0.0.1:{_free_port()}"  # bound then closed: nothing listens there
    ranker = _remote(url, tiny_reranker)
    ranker.warm_up()  # builds the client, sends nothing: a pipeline can be warmed up before its server is up
    assert ranker.scorer is not None
    with pytest.raises(RemoteScorerError, match=f"not reachable at {url}/score") as info:
        ranker.run(query=QUERY, documents=docs)
    assert (info.value.url, info.value.status_code) == (f"{url}/score", None)
    with pytest.raises(RemoteScorerError, match="not reachable"):
        await ranker.run_async(query=QUERY, documents=docs)

    p = _pipeline(_remote(url, tiny_reranker), docs)
    with pytest.raises(PipelineRuntimeError, match=f"not reachable at {url}/score") as wrapped:
        p.run(_inputs())
    assert isinstance(wrapped.value.__cause__, RemoteScorerError)


def test_a_model_the_server_does_not_serve_is_reported(server_url: str, docs: list[Document], no_api_key: None) -> None:
    from pixie_integrations.serving import RemoteScorerError

    ranker = PixieRanker(api_base_url=server_url)  # the default model name; the server serves the tiny folder
    with pytest.raises(RemoteScorerError, match="HTTP 404") as info:
        ranker.run(query=QUERY, documents=docs)
    assert DEFAULT_MODEL in str(info.value) and info.value.status_code == 404


def test_close_releases_the_connections_and_the_next_run_reconnects(
    server_url: str, cpu_kwargs: dict[str, Any], docs: list[Document], tiny_reranker: Path, no_api_key: None
) -> None:
    ranker = _remote(server_url, tiny_reranker, top_k=3)
    p = _pipeline(ranker, docs)
    first = _ranked(p.run(_inputs()))
    scorer = ranker.scorer
    assert scorer is not None
    p.close()  # Haystack's Pipeline.close() calls each component's close()
    assert ranker.scorer is None and scorer._client.is_closed  # type: ignore[union-attr]
    _assert_same(_ranked(p.run(_inputs())), first)
    assert ranker.scorer is not None and ranker.scorer is not scorer
    ranker.close()
    ranker.close()  # idempotent

    local = PixieRanker(**cpu_kwargs)
    local.warm_up()
    loaded = local.scorer
    local.close()  # a local model stays: its weights are shared
    assert local.scorer is loaded


class _VllmStandIn:
    """vLLM's ``POST /score`` for a seq-cls reranker: it scores (text_1, text_2) as given, nothing added."""

    def __init__(self, model_path: Path) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from pixie_integrations.benchmark import CardReference

        self.model = CardReference(model_path)  # the card's CrossEncoder path, robust to a chat template
        self.requests: list[dict[str, Any]] = []

        async def score(request: Any) -> JSONResponse:
            body = await request.json()
            self.requests.append(body)
            text_1 = [body["text_1"]] if isinstance(body["text_1"], str) else body["text_1"]
            pairs = [[text_1[0] if len(text_1) == 1 else text_1[i], t2] for i, t2 in enumerate(body["text_2"])]
            scores = self.model.predict(pairs)
            data = [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores)]
            return JSONResponse({"id": "score-1", "object": "list", "model": body.get("model"), "data": data})

        self.app = Starlette(routes=[Route("/score", score, methods=["POST"])])


def test_vllm_api_formats_the_template_and_equals_local(
    cpu_kwargs: dict[str, Any],
    docs: list[Document],
    tiny_reranker: Path,
    no_api_key: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _needs_serving()
    pytest.importorskip("sentence_transformers")
    from pixie_integrations.serving import serve_in_thread

    stand_in = _VllmStandIn(tiny_reranker)
    local = _pipeline(PixieRanker(**cpu_kwargs, top_k=4, instruction=REMOTE_INSTRUCTION), docs)
    want = local.run(_inputs(), include_outputs_from={"retriever"})
    want_raw = _ranked(local.run(_inputs(scale_score=False)))
    _forbid_local_models(monkeypatch)
    with serve_in_thread(stand_in.app, start_timeout=START_TIMEOUT_S) as url:
        ranker = PixieRanker(
            model=STAND_IN_MODEL, api_base_url=url, api="vllm", top_k=4, instruction=REMOTE_INSTRUCTION
        )
        p = _pipeline(ranker, docs)
        got = _ranked(p.run(_inputs()))
        _assert_same(got, _ranked(want), abs=1e-5)  # another implementation scoring the same tokens
        (request,) = stand_in.requests
        retrieved = [d.content for d in want["retriever"]["documents"]]
        assert request["model"] == STAND_IN_MODEL
        assert request["text_1"] == format_query(QUERY, REMOTE_INSTRUCTION)
        assert sorted(request["text_2"]) == sorted(format_document(t) for t in retrieved)
        assert "truncate_prompt_tokens" not in request
        # scale_score=False: the logit, recovered on the client from vLLM's probability
        _assert_same(_ranked(p.run(_inputs(scale_score=False))), want_raw, abs=1e-3)
