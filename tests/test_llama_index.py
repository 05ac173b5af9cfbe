"""PixieRerank inside real LlamaIndex objects, scored by the tiny model through the real PixieScorer (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import pickle
import runpy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import get_response_synthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import Field

from pixie_integrations import DEFAULT_INSTRUCTION, DEFAULT_MODEL, PixieScorer
from pixie_integrations.install import install_hint
from pixie_integrations.llama_index import PixieRerank, _rank_order
from pixie_integrations.testing import SAMPLE_DOCUMENTS

REPO = Path(__file__).resolve().parents[1]
QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
APPROX = {"rel": 1e-5, "abs": 1e-6}  # another batch shape may pad differently; the math is the same


# -- helpers and fixtures ------------------------------------------------------------------------------------------
def make_nodes() -> list[NodeWithScore]:
    """Retrieved nodes with metadata (one key excluded from embedding) and assorted first-stage scores, None too."""
    scores: list[float | None] = [0.9, None, 0.1, 0.5, -2.0, 0.0, 0.7, 0.3]
    return [
        NodeWithScore(
            node=TextNode(
                text=text,
                id_=f"node-{i}",
                metadata={"source": f"doc{i}.txt", "secret": "never scored"},
                excluded_embed_metadata_keys=["secret"],
            ),
            score=score,
        )
        for i, (text, score) in enumerate(zip(SAMPLE_DOCUMENTS, scores))
    ]


def texts(nodes: list[NodeWithScore], mode: MetadataMode = MetadataMode.EMBED) -> list[str]:
    return [n.node.get_content(metadata_mode=mode) for n in nodes]


def assert_reranked(
    out: list[NodeWithScore],
    nodes: list[NodeWithScore],
    scorer: PixieScorer,
    query: str,
    top_n: int,
    *,
    mode: MetadataMode = MetadataMode.EMBED,
    instruction: str | None = None,
) -> None:
    """``out`` is the best ``top_n`` of ``nodes``, best first, with the scorer's exact scores as Python floats."""
    expected = scorer.score(query, texts(nodes, mode), instruction=instruction)
    by_id = {n.node.node_id: s for n, s in zip(nodes, expected)}
    assert len(out) == min(top_n, len(nodes))
    for item in out:
        assert type(item.score) is float
        assert item.score == pytest.approx(by_id[item.node.node_id], **APPROX)
    out_scores = [item.score for item in out]
    assert out_scores == sorted(out_scores, reverse=True)
    assert out_scores == pytest.approx(sorted(expected, reverse=True)[:top_n], **APPROX)


@pytest.fixture()
def reranker(tiny_scorer: PixieScorer) -> PixieRerank:
    return PixieRerank(scorer=tiny_scorer, top_n=3)


@pytest.fixture()
def documents() -> list[Document]:
    return [Document(text=text, metadata={"source": f"doc{i}.txt"}) for i, text in enumerate(SAMPLE_DOCUMENTS)]


@contextlib.contextmanager
def mock_settings() -> Iterator[None]:
    """Global Settings with MockLLM and MockEmbedding; whatever was there before comes back afterwards."""
    saved = (Settings._llm, Settings._embed_model, Settings._callback_manager)
    Settings.llm = MockLLM()
    Settings.embed_model = MockEmbedding(embed_dim=8)
    try:
        yield
    finally:
        Settings._llm, Settings._embed_model, Settings._callback_manager = saved


@pytest.fixture()
def offline_settings() -> Iterator[None]:
    with mock_settings():
        yield


class EventCollector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventCollector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def of(self, kind: type[BaseEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture()
def collector() -> Iterator[EventCollector]:
    """An event handler on the root dispatcher, where observability tools attach theirs; removed afterwards."""
    root = get_dispatcher()
    handler = EventCollector()
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers.remove(handler)


def snapshot(nodes: list[NodeWithScore]) -> list[dict[str, Any]]:
    return [copy.deepcopy(n.model_dump()) for n in nodes]


# -- import contract -----------------------------------------------------------------------------------------------
def test_core_import_leaves_llama_index_alone_and_missing_extra_names_the_install() -> None:
    code = (
        "import sys\n"
        "import pixie_integrations\n"
        "assert not any(m == 'llama_index' or m.startswith('llama_index.') for m in sys.modules), 'core imported it'\n"
        "sys.modules['llama_index'] = None  # as if the extra were not installed\n"
        "try:\n"
        "    import pixie_integrations.llama_index\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert install_hint("llama-index") in result.stdout


# -- construction --------------------------------------------------------------------------------------------------
def test_defaults_fields_and_class_name() -> None:
    reranker = PixieRerank()  # lazy: nothing is loaded, so the default hub id costs nothing offline
    assert isinstance(reranker, BaseNodePostprocessor)
    assert PixieRerank.class_name() == "PixieRerank"
    assert reranker.model == DEFAULT_MODEL
    assert reranker.top_n == 2
    assert reranker.instruction is None
    assert reranker.keep_retrieval_score is False
    assert reranker.metadata_mode is MetadataMode.EMBED
    assert (reranker.device, reranker.dtype, reranker.max_length) == (None, None, None)
    assert reranker._slot.get(reranker._settings()) is None
    fields = ("model", "top_n", "instruction", "keep_retrieval_score", "metadata_mode", "device", "dtype", "max_length")
    for name in fields:
        assert PixieRerank.model_fields[name].description, f"{name} has no description"


def test_unknown_arguments_raise() -> None:
    assert PixieRerank.model_config["extra"] == "forbid"  # LlamaIndex's default, "ignore", would drop them silently
    with pytest.raises(TypeError, match="top_k"):
        PixieRerank(top_k=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="top_k"):
        PixieRerank.from_dict({"top_k": 3, "class_name": "PixieRerank"})
    reranker = PixieRerank()
    with pytest.raises(ValueError):
        reranker.top_k = 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("top_n", [0, -1, True, 1.5, "2"])
def test_bad_top_n_raises_at_construction(top_n: Any) -> None:
    with pytest.raises(ValueError):
        PixieRerank(top_n=top_n)


def test_bad_device_dtype_max_length_raise_at_construction() -> None:
    with pytest.raises(ValueError, match="device"):
        PixieRerank(device="gpu-please")
    with pytest.raises(ValueError):
        PixieRerank(dtype="float8")
    with pytest.raises(ValueError):
        PixieRerank(max_length=0)


def test_torch_device_and_dtype_are_stored_as_strings() -> None:
    import torch

    reranker = PixieRerank(device=torch.device("cpu"), dtype=torch.bfloat16)
    assert (reranker.device, reranker.dtype) == ("cpu", "bfloat16")
    assert json.loads(reranker.to_json())["dtype"] == "bfloat16"


def test_serialization_round_trip(tiny_reranker: Path) -> None:
    reranker = PixieRerank(
        model=tiny_reranker,
        top_n=4,
        instruction="Find aerospace passages",
        keep_retrieval_score=True,
        metadata_mode="none",
        device="cpu",
        dtype="float32",
        max_length=512,
    )
    data = reranker.to_dict()
    assert data["class_name"] == "PixieRerank"
    assert data["model"] == str(tiny_reranker)
    assert data["top_n"] == 4 and data["max_length"] == 512 and data["metadata_mode"] == MetadataMode.NONE
    assert "scorer" not in data and "_slot" not in data and "callback_manager" not in data
    again = PixieRerank.from_dict(data)
    assert again.to_dict() == data
    assert PixieRerank.from_json(reranker.to_json()).to_dict() == data


def test_shared_scorer_and_conflicting_settings(tiny_scorer: PixieScorer, tiny_reranker: Path) -> None:
    reranker = PixieRerank(scorer=tiny_scorer)
    assert reranker.scorer is tiny_scorer
    assert reranker.model == tiny_scorer.model_name
    assert PixieRerank(scorer=tiny_scorer, model=tiny_reranker).scorer is tiny_scorer
    with pytest.raises(ValueError, match="device"):
        PixieRerank(scorer=tiny_scorer, device="cpu")
    with pytest.raises(ValueError, match="differs"):
        PixieRerank(scorer=tiny_scorer, model="someone/else")
    with pytest.raises(TypeError):
        PixieRerank(scorer="not a scorer")  # type: ignore[arg-type]


def test_lazy_scorer_shares_the_loaded_weights(tiny_scorer: PixieScorer, tiny_reranker: Path) -> None:
    first = PixieRerank(model=tiny_reranker, device="cpu", dtype="float32")
    second = PixieRerank(model=tiny_reranker, device="cpu", dtype="float32")
    assert first._slot.get(first._settings()) is None  # nothing loaded until first use
    assert first.scorer is first.scorer  # created once, then kept
    assert first.scorer.model is second.scorer.model is tiny_scorer.model  # one copy of the weights
    nodes = make_nodes()
    assert_reranked(first.postprocess_nodes(nodes, query_str=QUERY), nodes, tiny_scorer, QUERY, 2)


def test_changing_settings_reloads_scorer(tiny_scorer: PixieScorer, tiny_reranker: Path) -> None:
    reranker = PixieRerank(model=tiny_reranker, device="cpu", dtype="float32")
    old = reranker.scorer
    reranker.max_length = 256
    assert reranker.scorer is not old and reranker.scorer.max_length == 256
    copied = reranker.model_copy(update={"max_length": 512})
    assert copied.scorer.max_length == 512 and reranker.scorer.max_length == 256


def test_pickle_and_deepcopy_do_not_serialize_the_model(tiny_scorer: PixieScorer, tiny_reranker: Path) -> None:
    reranker = PixieRerank(model=tiny_reranker, device="cpu", dtype="float32", top_n=3)
    reranker.scorer  # noqa: B018 - load it, so that pickling would meet the model
    blob = pickle.dumps(reranker)
    assert len(blob) < 50_000  # the tiny model alone is far bigger
    restored = pickle.loads(blob)
    assert restored.to_dict() == reranker.to_dict()
    nodes = make_nodes()
    assert_reranked(restored.postprocess_nodes(nodes, query_str=QUERY), nodes, tiny_scorer, QUERY, 3)
    assert copy.deepcopy(reranker).scorer.model is tiny_scorer.model


# -- postprocessing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_n", [1, 3, 8, 20])
def test_scores_equal_the_scorer_and_best_come_first(
    reranker: PixieRerank, tiny_scorer: PixieScorer, top_n: int
) -> None:
    reranker.top_n = top_n
    nodes = make_nodes()
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert_reranked(out, nodes, tiny_scorer, QUERY, top_n)
    # The excluded metadata key never reaches the model; the included one does.
    assert all("never scored" not in t and "source: doc" in t for t in texts(nodes))


def test_query_bundle_is_accepted(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    nodes = make_nodes()
    out = reranker.postprocess_nodes(nodes, QueryBundle(query_str="satellite data"))
    assert_reranked(out, nodes, tiny_scorer, "satellite data", 3)


def test_metadata_mode_decides_the_scored_text(tiny_scorer: PixieScorer) -> None:
    nodes = make_nodes()
    embed = PixieRerank(scorer=tiny_scorer, top_n=8).postprocess_nodes(nodes, query_str=QUERY)
    bare = PixieRerank(scorer=tiny_scorer, top_n=8, metadata_mode=MetadataMode.NONE).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert_reranked(bare, nodes, tiny_scorer, QUERY, 8, mode=MetadataMode.NONE)
    by_id = {n.node.node_id: n.score for n in embed}
    assert any(n.score != pytest.approx(by_id[n.node.node_id], **APPROX) for n in bare)


def test_instruction_is_used(tiny_scorer: PixieScorer) -> None:
    instruction = "Given an aerospace question, retrieve Korean passages about satellites"
    nodes = make_nodes()
    out = PixieRerank(scorer=tiny_scorer, top_n=8, instruction=instruction).postprocess_nodes(nodes, query_str=QUERY)
    assert_reranked(out, nodes, tiny_scorer, QUERY, 8, instruction=instruction)
    default = tiny_scorer.score(QUERY, texts(nodes), instruction=DEFAULT_INSTRUCTION)
    assert sorted(n.score for n in out) != pytest.approx(sorted(default), **APPROX)


@pytest.mark.parametrize("keep", [False, True])
def test_caller_nodes_are_not_mutated(reranker: PixieRerank, keep: bool) -> None:
    reranker.keep_retrieval_score = keep
    nodes = make_nodes()
    inner = [n.node for n in nodes]
    before = snapshot(nodes)
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert snapshot(nodes) == before
    assert [n.node for n in nodes] == inner and all(a is b for a, b in zip((n.node for n in nodes), inner))
    assert not any(o is n for o in out for n in nodes)  # new NodeWithScore objects
    if keep:
        assert not any(o.node is n for o in out for n in inner)  # metadata changed: the node was copied


def test_keep_retrieval_score(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    reranker.keep_retrieval_score = True
    reranker.top_n = 8
    nodes = make_nodes()
    first_stage = {n.node.node_id: n.score for n in nodes}
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert_reranked(out, nodes, tiny_scorer, QUERY, 8)  # the key did not change what was scored
    assert any(o.node.metadata["retrieval_score"] is None for o in out)
    for o in out:
        assert o.node.metadata["retrieval_score"] == first_stage[o.node.node_id]
        assert o.node.metadata["source"].startswith("doc")  # the rest of the metadata is still there
        assert o.node.excluded_embed_metadata_keys == ["secret", "retrieval_score"]
        assert "retrieval_score" in o.node.excluded_llm_metadata_keys
        for mode in (MetadataMode.EMBED, MetadataMode.LLM):
            assert "retrieval_score" not in o.node.get_content(metadata_mode=mode)
    # Reranking the output again (a second stage) scores the same text and keeps one exclusion entry.
    again = reranker.postprocess_nodes(out, query_str=QUERY)
    assert [a.score for a in again] == pytest.approx([o.score for o in out], **APPROX)
    assert all(a.node.excluded_embed_metadata_keys.count("retrieval_score") == 1 for a in again)


def test_without_keep_retrieval_score_metadata_is_untouched(reranker: PixieRerank) -> None:
    out = reranker.postprocess_nodes(make_nodes(), query_str=QUERY)
    assert all("retrieval_score" not in o.node.metadata for o in out)


def test_rank_order_is_stable_and_total() -> None:
    # Raw logits below zero, zero, ties (input order kept) and NaN (last): the built-ins' key gets these wrong.
    scores = [-1.5, 0.0, -0.2, 3.0, -0.2, float("nan"), -7.0, 0.0]
    order = _rank_order(scores)
    assert order == [3, 1, 7, 2, 4, 0, 6, 5]
    assert _rank_order([]) == []


def test_missing_query_raises(reranker: PixieRerank) -> None:
    with pytest.raises(ValueError, match="query"):
        reranker.postprocess_nodes(make_nodes())
    with pytest.raises(ValueError, match="query"):
        asyncio.run(reranker.apostprocess_nodes(make_nodes()))


def test_empty_nodes_give_empty_list_without_loading_a_model(collector: EventCollector) -> None:
    reranker = PixieRerank(model="/no/such/model/folder")
    assert reranker.postprocess_nodes([], query_str=QUERY) == []
    assert asyncio.run(reranker.apostprocess_nodes([], query_str=QUERY)) == []
    assert not collector.of(ReRankStartEvent)


# -- observability -------------------------------------------------------------------------------------------------
def test_instrumentation_events(reranker: PixieRerank, tiny_scorer: PixieScorer, collector: EventCollector) -> None:
    nodes = make_nodes()
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    [start] = collector.of(ReRankStartEvent)
    [end] = collector.of(ReRankEndEvent)
    assert start.query.query_str == QUERY
    assert start.top_n == 3
    assert start.model_name == tiny_scorer.model_name
    assert [n.node.node_id for n in start.nodes] == [n.node.node_id for n in nodes]
    assert [(n.node.node_id, n.score) for n in end.nodes] == [(n.node.node_id, n.score) for n in out]
    assert collector.events.index(start) < collector.events.index(end)


def test_legacy_callback_event(tiny_scorer: PixieScorer) -> None:
    debug = LlamaDebugHandler()
    reranker = PixieRerank(scorer=tiny_scorer, top_n=2, callback_manager=CallbackManager([debug]))
    nodes = make_nodes()
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    [(start, end)] = debug.get_event_pairs(CBEventType.RERANKING)
    assert start.payload[EventPayload.MODEL_NAME] == tiny_scorer.model_name
    assert start.payload[EventPayload.QUERY_STR] == QUERY
    assert start.payload[EventPayload.TOP_K] == 2
    assert start.payload[EventPayload.NODES] == nodes
    assert end.payload[EventPayload.NODES] == out


# -- inside LlamaIndex pipelines -----------------------------------------------------------------------------------
def all_index_scores(index: VectorStoreIndex, scorer: PixieScorer, query: str) -> list[float]:
    nodes = [NodeWithScore(node=n) for n in index.docstore.docs.values()]
    return scorer.score(query, texts(nodes))


def test_as_query_engine_with_settings(
    offline_settings: None, documents: list[Document], tiny_scorer: PixieScorer, collector: EventCollector
) -> None:
    debug = LlamaDebugHandler()
    Settings.callback_manager = CallbackManager([debug])  # restored by offline_settings
    index = VectorStoreIndex.from_documents(documents)
    engine = index.as_query_engine(
        similarity_top_k=len(documents), node_postprocessors=[PixieRerank(scorer=tiny_scorer, top_n=3)]
    )
    response = engine.query(QUERY)
    assert_reranked(response.source_nodes, response.source_nodes, tiny_scorer, QUERY, 3)
    # MockEmbedding ties everything, so retrieval returned all: the reranker kept the best of the whole index.
    assert [n.score for n in response.source_nodes] == pytest.approx(
        sorted(all_index_scores(index, tiny_scorer, QUERY), reverse=True)[:3], **APPROX
    )
    assert response.source_nodes[0].node.get_content() in str(response)  # MockLLM echoes the context it got
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 1  # the engine's callback manager saw it
    assert len(collector.of(ReRankEndEvent)) == 1


def test_mock_settings_are_restored() -> None:
    before = (Settings._llm, Settings._embed_model, Settings._callback_manager)
    with mock_settings():
        assert isinstance(Settings.llm, MockLLM) and isinstance(Settings.embed_model, MockEmbedding)
    after = (Settings._llm, Settings._embed_model, Settings._callback_manager)
    assert all(a is b for a, b in zip(after, before))


def test_retriever_query_engine_explicit_models(documents: list[Document], tiny_scorer: PixieScorer) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    retriever = index.as_retriever(similarity_top_k=len(documents))
    reranker = PixieRerank(scorer=tiny_scorer, top_n=2, keep_retrieval_score=True)
    engines = [
        RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[reranker]),
        RetrieverQueryEngine(
            retriever, response_synthesizer=get_response_synthesizer(llm=MockLLM()), node_postprocessors=[reranker]
        ),
    ]
    best = sorted(all_index_scores(index, tiny_scorer, QUERY), reverse=True)[:2]
    for engine in engines:
        response = engine.query(QUERY)
        assert [n.score for n in response.source_nodes] == pytest.approx(best, **APPROX)
        assert all(isinstance(n.node.metadata["retrieval_score"], float) for n in response.source_nodes)
        assert "retrieval_score" not in str(response)  # the LLM context does not show it


async def test_aquery(documents: list[Document], tiny_scorer: PixieScorer, collector: EventCollector) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(documents), node_postprocessors=[PixieRerank(scorer=tiny_scorer, top_n=3)]
    )
    response = await engine.aquery(QUERY)
    best = sorted(all_index_scores(index, tiny_scorer, QUERY), reverse=True)[:3]
    assert [n.score for n in response.source_nodes] == pytest.approx(best, **APPROX)
    [start] = collector.of(ReRankStartEvent)
    assert start.query.query_str == QUERY and start.top_n == 3
    assert len(collector.of(ReRankEndEvent)) == 1


async def test_apostprocess_matches_sync(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    nodes = make_nodes()
    out = await reranker.apostprocess_nodes(nodes, query_str=QUERY)
    assert_reranked(out, nodes, tiny_scorer, QUERY, 3)
    sync = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert [(n.node.node_id, n.score) for n in out] == [(n.node.node_id, n.score) for n in sync]


async def test_async_scoring_does_not_block_the_event_loop(tiny_scorer: PixieScorer) -> None:
    assert PixieRerank._apostprocess_nodes is not BaseNodePostprocessor._apostprocess_nodes  # native, not the default
    reranker = PixieRerank(scorer=tiny_scorer, top_n=5)
    long_text = " ".join(SAMPLE_DOCUMENTS) * 2
    nodes = [NodeWithScore(node=TextNode(text=f"{i} {long_text}"), score=None) for i in range(48)]
    task = asyncio.create_task(reranker.apostprocess_nodes(nodes, query_str=QUERY))
    ticks = 0
    started = time.perf_counter()
    while not task.done():
        ticks += 1
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - started
    out = await task
    assert len(out) == 5
    assert elapsed > 0.05, "workload too small to tell"
    # Had scoring run on the loop thread, the ticker could not have run while it did.
    assert ticks >= 10


async def test_concurrent_async_calls(reranker: PixieRerank, tiny_scorer: PixieScorer) -> None:
    queries = ["satellite data", "capital of France", QUERY, "NDCG evaluation"]
    nodes = make_nodes()
    results = await asyncio.gather(*(reranker.apostprocess_nodes(nodes, query_str=q) for q in queries))
    for query, out in zip(queries, results):
        assert_reranked(out, nodes, tiny_scorer, query, 3)


# -- the example -------------------------------------------------------------------------------------------------
def test_example_runs_offline_with_tiny_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (a fresh interpreter would spend most of the time importing torch); `--tiny` still builds
    # its own model, exactly as `python examples/llama_index_rerank.py --tiny` does.
    monkeypatch.setattr(sys, "argv", ["llama_index_rerank.py", "--tiny", "--top-n", "3"])
    runpy.run_path(str(REPO / "examples" / "llama_index_rerank.py"), run_name="__main__")
    stdout = capsys.readouterr().out
    assert "PixieRerank(model=" in stdout
    scores = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith("#")]
    engine_block, direct_block, switched_block = scores[:3], scores[3:6], scores[6:]
    assert len(engine_block) == 3 and engine_block == sorted(engine_block, reverse=True)
    assert direct_block == engine_block  # the same reranker on the same retrieval, inside and outside the engine
    assert "A saved SentenceTransformerRerank config, loaded as PixieRerank" in stdout
    assert switched_block == engine_block[:2]  # the saved config's top_n=2, same model and scores
    assert all(0.0 <= s <= 1.0 and not math.isnan(s) for s in scores)
