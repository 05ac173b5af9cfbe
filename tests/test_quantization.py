"""Int8 that proves itself: the kernel, smoothing, the gate (a good recipe passes, damaging ones are refused), the
``quantize`` command's exits, and the quantized folder loading wherever a model loads.

Random tiny weights have no outlier features, so these tests show the machinery, not how a real checkpoint fares.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

from pixie_integrations import PixieScorer
from pixie_integrations.cli import main
from pixie_integrations.quantization import (
    GateFailedError,
    GateThresholds,
    QuantizationRecipe,
    quantize,
    read_quantized_folder,
)
from pixie_integrations.quantization.data import load_quantization_data
from pixie_integrations.quantization.gate import compare_scores
from pixie_integrations.quantization.kernels import Int8Linear
from pixie_integrations.quantization.smoothing import collect_activation_stats, smooth_model
from pixie_integrations.testing import build_tiny_reranker

pytest.importorskip("pytrec_eval")
pytest.importorskip("scipy")

WORDS = ["서울", "부산", "날씨", "맛집", "검색", "문서", "모델", "데이터", "지하철", "여행", "apple", "river", "search", "model", "ranking", "city", "weather", "food", "train", "museum", "history", "한국어", "영어", "retrieval", "korean"]

# The tiny model's scores sit close together, so the check is held to ranking agreement only (NDCG on random
# judgments of near-equal scores measures noise); tests of NDCG use data with judgments explicitly.
TAU_ONLY = GateThresholds(max_ndcg_drop=1.0, min_kendall_tau=0.95)
SMALL = {"calibration_queries": 4, "calibration_documents": 6, "check_queries": 8, "candidates": 10}


def _write_jsonl(path: Path, queries: int = 14, docs: int = 10, judged: bool = True, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(queries):
            row: dict = {
                "query": " ".join(rng.choice(WORDS) for _ in range(4)),
                "documents": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 40))) for _ in range(docs)],
            }
            if judged:
                row["relevance"] = [rng.choice((0, 0, 1, 2)) for _ in range(docs)]
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker(tmp_path_factory.mktemp("q-model"), seed=1, num_layers=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("q-data") / "pairs.jsonl", judged=False)


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory: pytest.TempPathFactory, model: Path, data: Path) -> Path:
    out = tmp_path_factory.mktemp("q-out") / "pixie-int8"
    result = quantize(model, data, out, thresholds=TAU_ONLY, show_progress=False, **SMALL)
    assert result.report.passed and result.output == out
    return out


# -- the kernel --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 16, 17, 300])
def test_int8_linear_is_close_to_the_float_layer(dtype: torch.dtype, rows: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=True)
    x = torch.randn(2, rows, 96)
    linear.requires_grad_(False)
    layer = Int8Linear(linear).to(dtype)
    want = linear(x)
    got = layer(x.to(dtype))
    assert got.dtype == dtype and got.shape == want.shape
    scale = float(want.abs().max())
    assert float((got.float() - want).abs().max()) < 0.03 * scale
    eager = Int8Linear(linear, fused=False).to(dtype)(x.to(dtype))
    assert torch.allclose(got.float(), eager.float(), atol=1e-2 * scale)


def test_smoothing_leaves_the_scores_unchanged(model: Path) -> None:
    scorer = PixieScorer(model, device="cpu", dtype="float32")
    docs = ["서울 지하철 여행", "apple river model", "검색 모델 데이터 한국어"]
    before = scorer.score("서울 날씨", docs, raw=True)
    import copy

    original = copy.deepcopy(scorer.model.state_dict())
    try:
        with collect_activation_stats(scorer.model) as stats:
            scorer.score("부산 맛집", docs)
        assert len(stats.maxima) == 2 * 7  # every linear layer of both decoder layers saw inputs
        assert smooth_model(scorer.model, stats, alpha=0.8) == 2 * 4
        after = scorer.score("서울 날씨", docs, raw=True)
        assert after == pytest.approx(before, abs=1e-4)
        assert not torch.equal(scorer.model.model.layers[0].input_layernorm.weight, original[
            "model.layers.0.input_layernorm.weight"])
    finally:
        scorer.model.load_state_dict(original)


# -- data --------------------------------------------------------------------------------------------------------------
def test_calibration_and_check_queries_never_overlap(data: Path) -> None:
    pairs = load_quantization_data(data, calibration_queries=5, check_queries=6, calibration_documents=3)
    assert {q.qid for q in pairs.calibration}.isdisjoint(q.qid for q in pairs.check)
    assert len(pairs.calibration) == 5 and len(pairs.check) == 6
    assert all(len(q.documents) == 3 for q in pairs.calibration)
    assert pairs.qrels is None


def test_beir_folder_gives_bm25_candidates_and_qrels() -> None:
    pytest.importorskip("bm25s")
    folder = Path(__file__).parent / "data" / "beir_tiny"
    pairs = load_quantization_data(folder, calibration_queries=1, check_queries=10, candidates=5)
    assert pairs.calibration and pairs.check and pairs.qrels is not None
    assert set(pairs.qrels) == {q.qid for q in pairs.check}
    assert "BM25" in pairs.source


@pytest.mark.parametrize(
    ("line", "mentions"),
    [
        ("not json", "malformed JSON"),
        ('{"documents": ["a"]}', '"query"'),
        ('{"query": "q", "documents": []}', '"documents"'),
        ('{"query": "q", "documents": ["a", "b"], "relevance": [1]}', "relevance"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, line: str, mentions: str) -> None:
    from pixie_integrations.evaluation.data import DataError

    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "fine", "documents": ["x"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=mentions) as info:
        load_quantization_data(path)
    assert ":2:" in str(info.value)


# -- the gate ----------------------------------------------------------------------------------------------------------
def test_gate_figures_on_known_scores() -> None:
    from pixie_integrations.quantization.data import QueryCandidates

    queries = [QueryCandidates("q1", "q", ("a", "b", "c"), ("A", "B", "C"))]
    qrels = {"q1": {"a": 1}}
    same = compare_scores(queries, [[0.9, 0.5, 0.1]], [[0.8, 0.4, 0.2]], qrels=qrels)
    assert same.passed and same.figures["kendall_tau_mean"] == 1.0 and same.figures["ndcg@10_drop"] == 0.0
    assert same.figures["max_score_diff"] == pytest.approx(0.1)
    flipped = compare_scores(queries, [[0.9, 0.5, 0.1]], [[0.1, 0.5, 0.9]], qrels=qrels)
    assert not flipped.passed
    assert any("Kendall tau" in f for f in flipped.failed) and any("NDCG@10 drops" in f for f in flipped.failed)


def test_a_good_recipe_passes_and_the_report_travels_in_the_folder(int8_folder: Path) -> None:
    contents = read_quantized_folder(int8_folder)
    assert contents is not None
    gate = contents.report["gate"]
    assert gate["passed"] is True and contents.report["forced"] is False
    assert gate["figures"]["kendall_tau_mean"] >= 0.95
    assert set(contents.report["sensitivity"]) == {f"model.layers.{i}" for i in range(2)}
    assert contents.report["data"]["calibration_queries"] == 4 and contents.report["data"]["check_queries"] == 8
    assert not (int8_folder.parent / f".{int8_folder.name}.partial").exists()


@pytest.mark.parametrize(
    "recipe",
    [
        QuantizationRecipe(weight_bits=4, per_channel=True, smooth_alpha=None, include_head=True),
        QuantizationRecipe(weight_bits=4, per_channel=False, smooth_alpha=None),
    ],
    ids=["int4-with-head", "int4-per-tensor"],
)
def test_a_damaging_recipe_is_refused_and_nothing_is_written(
    model: Path, data: Path, tmp_path: Path, recipe: QuantizationRecipe
) -> None:
    out = tmp_path / "bad-int8"
    with pytest.raises(GateFailedError, match="Kendall tau") as info:
        quantize(model, data, out, recipe=recipe, keep_layers=(), thresholds=TAU_ONLY, show_progress=False, **SMALL)
    assert info.value.report.figures["kendall_tau_mean"] < 0.95
    assert not out.exists() and not (tmp_path / ".bad-int8.partial").exists()


# -- loading -----------------------------------------------------------------------------------------------------------
def test_the_folder_loads_as_int8_and_logs_its_report(
    int8_folder: Path, model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pixie_integrations.loading"):
        scorer = PixieScorer(int8_folder, device="cpu")
    assert "quality gate passed" in caplog.text
    layers = scorer.model.model.layers
    assert all(isinstance(layer.mlp.down_proj, Int8Linear) for layer in layers)
    assert isinstance(scorer.model.score, torch.nn.Linear)  # the head stays float
    reference = PixieScorer(model, device="cpu", dtype="float32")
    docs = ["서울 지하철 여행 날씨", "apple river", "검색 모델 한국어 데이터 retrieval"]
    got, want = scorer.score("서울 여행", docs), reference.score("서울 여행", docs)
    assert got == pytest.approx(want, abs=0.05)
    assert scorer.family is reference.family


def test_without_int8_units_the_float_weights_run_and_it_says_so(
    int8_folder: Path, model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pixie_integrations.cpu import CpuClass, CpuInfo
    from pixie_integrations.quantization import recipe as recipe_module

    no_int8 = CpuInfo(model="test CPU", arch="x86_64", cpu_class=CpuClass.AVX2, flags=("avx2", "fma"), logical_cpus=2)
    monkeypatch.setattr(recipe_module, "cpu_info", lambda: no_int8)
    with caplog.at_level(logging.WARNING, logger="pixie_integrations.loading"):
        scorer = PixieScorer(int8_folder, device="cpu", dtype="float32", token_budget=999)  # a fresh load
    assert "no int8 dot-product units" in caplog.text and "float weights" in caplog.text
    assert not any(isinstance(m, Int8Linear) for m in scorer.model.modules())
    reference = PixieScorer(model, device="cpu", dtype="float32")
    docs = ["서울 지하철", "apple river model"]
    assert scorer.score("서울", docs) == pytest.approx(reference.score("서울", docs), abs=1e-4)  # smoothing is exact


def test_force_writes_a_failing_model_and_loading_warns(
    model: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "forced"
    strict = GateThresholds(max_ndcg_drop=1.0, min_kendall_tau=1.01)  # cannot pass
    result = quantize(model, data, out, thresholds=strict, keep_layers=(), force=True, show_progress=False, **SMALL)
    assert result.forced and result.output == out and not result.report.passed
    assert read_quantized_folder(out).report["forced"] is True
    with caplog.at_level(logging.WARNING, logger="pixie_integrations.loading"):
        PixieScorer(out, device="cpu")
    assert "--force" in caplog.text and "failed its quality gate" in caplog.text


# -- the command -------------------------------------------------------------------------------------------------------
def test_cli_writes_the_model_when_the_gate_holds(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli-int8"
    code = main([
        "quantize", "--model", str(model), "--data", str(data), "--output", str(out), "--max-ndcg-drop", "1",
        "--calibration-queries", "4", "--check-queries", "8", "--candidates", "10", "--keep-layers", "0",
        "--no-progress",
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Kendall tau per query" in printed and "quality gate passed" in printed and str(out) in printed
    assert read_quantized_folder(out).recipe.keep == ("model.layers.0",)


def test_cli_exits_1_naming_the_figure_when_the_gate_fails(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    judged = _write_jsonl(tmp_path / "judged.jsonl", judged=True, seed=3)
    out = tmp_path / "refused"
    code = main([
        "quantize", "--model", str(model), "--data", str(judged), "--output", str(out), "--min-kendall-tau", "1.01",
        "--calibration-queries", "4", "--check-queries", "6", "--candidates", "8", "--keep-layers", "none",
        "--no-progress",
    ])
    captured = capsys.readouterr()
    assert code == 1, captured.err[-2000:]
    assert "NDCG@10: unquantized" in captured.out  # judged data: NDCG is part of the report
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixie-rerank: error: not written: mean Kendall tau")
    assert "--force" in err[0] and not out.exists()


@pytest.mark.parametrize(
    ("extra", "mentions"),
    [
        (["--data", "/no/such/data"], "no such file or folder"),
        (["--smooth-alpha", "1.5"], "--smooth-alpha"),
    ],
)
def test_cli_user_mistakes_exit_2_in_one_line(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], mentions: str
) -> None:
    args = ["quantize", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and mentions in err[0]


def test_cli_refuses_an_output_folder_that_is_not_empty(
    model: Path, data: Path, int8_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", "--model", str(model), "--data", str(data), "--output", str(int8_folder)]) == 2
    assert "not empty" in capsys.readouterr().err


# -- everywhere a model loads ------------------------------------------------------------------------------------------
QUERY = "서울 여행"
DOCS = ["서울 지하철 여행 날씨", "apple river", "검색 모델 한국어 데이터 retrieval", "부산 맛집"]


def test_the_three_adapters_rerank_with_the_int8_folder(int8_folder: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    from haystack import Document as HaystackDocument
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from pixie_integrations.haystack import PixieRanker
    from pixie_integrations.langchain import PixieRerank as LangChainRerank
    from pixie_integrations.llama_index import PixieRerank as LlamaIndexRerank

    want = PixieScorer(int8_folder, device="cpu").score(QUERY, DOCS)
    best = max(range(len(DOCS)), key=lambda i: want[i])
    lc = LangChainRerank(model=str(int8_folder), top_n=2, device="cpu")
    out = lc.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert out[0].page_content == DOCS[best]
    assert out[0].metadata["relevance_score"] == pytest.approx(want[best], abs=1e-6)
    li = LlamaIndexRerank(model=str(int8_folder), top_n=2, device="cpu")
    nodes = li.postprocess_nodes([NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCS], query_str=QUERY)
    assert nodes[0].node.get_content() == DOCS[best] and nodes[0].score == pytest.approx(want[best], abs=1e-6)
    ranker = PixieRanker(model=str(int8_folder), top_k=2)
    ranker.warm_up()
    docs = ranker.run(query=QUERY, documents=[HaystackDocument(content=d) for d in DOCS])["documents"]
    assert docs[0].content == DOCS[best] and docs[0].score == pytest.approx(want[best], abs=1e-6)


def test_the_server_serves_the_int8_folder(int8_folder: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from pixie_integrations.serving import create_app, serve_in_thread

    scorer = PixieScorer(int8_folder, device="cpu")
    want = scorer.score(QUERY, DOCS)
    with serve_in_thread(create_app(scorer), start_timeout=60) as url:
        body = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert [got[i] for i in range(len(DOCS))] == pytest.approx(want, abs=1e-6)


def test_bench_times_an_int8_folder_and_builds_its_own(int8_folder: Path, tmp_path: Path) -> None:
    from pixie_integrations.benchmark import run_benchmark

    result = run_benchmark(
        workload="latency", model=str(int8_folder), systems=("pixie-fp32", "pixie"), device="cpu",
        docs_per_query=6, show_progress=False, memory=False,
    )
    assert result["failed"] == {} and result["systems"]["pixie"]["pairs_per_s"] > 0
    built = run_benchmark(
        workload="beir", shape="tiny", systems=("pixie-fp32", "pixie-int8:calibration_pairs=8"), device="cpu",
        queries=2, docs_per_query=6, show_progress=False, model_dir=tmp_path / "tiny", memory=False,
    )
    assert built["failed"] == {}
    int8 = built["systems"]["pixie-int8:calibration_pairs=8"]
    assert int8["pairs_per_s"] > 0 and int8["kendall_tau_vs_pixie-fp32"] > 0.5
    assert built["calibration"]["pairs"] == 8


def test_the_example_runs_offline(run_example) -> None:
    result = run_example("quantize.py", "--tiny", timeout=600)
    assert "Kendall tau per query" in result.stdout and "written to" in result.stdout


def test_ray_data_scores_with_the_int8_folder(ray_cluster: None, int8_folder: Path) -> None:
    import ray.data

    from pixie_integrations.ray import rerank_dataset

    rows = [{"id": i, "query": QUERY, "document": DOCS[i % len(DOCS)]} for i in range(12)]
    scored = rerank_dataset(
        ray.data.from_items(rows), int8_folder, document_column="document", concurrency=1, num_cpus=1,
        rows_per_batch=12, device="cpu",
    )
    got = [row["score"] for row in sorted(scored.take_all(), key=lambda row: row["id"])]
    want = PixieScorer(int8_folder, device="cpu").score_pairs([(r["query"], r["document"]) for r in rows])
    assert got == pytest.approx(want, abs=1e-5)


def test_without_the_gate_libraries_it_stops_before_loading_anything(
    model: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from pixie_integrations.quantization import gate

    real = importlib.util.find_spec
    monkeypatch.setattr(gate.importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    loaded = []
    monkeypatch.setattr("pixie_integrations.quantization.quantizer.PixieScorer", lambda *a, **k: loaded.append(a))
    out = tmp_path / "never"
    assert main(["quantize", "--model", str(model), "--data", str(data), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs scipy" in err[0] and 'pip install -e ".[eval]"' in err[0]
    assert loaded == [] and not out.exists()
