"""The benchmark: workloads of the requested shape, every system on the same weights, parity in its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pixie_integrations.bench.workloads import calibration_pairs
from pixie_integrations.benchmark import build_workload, format_table, kendall_tau, run_benchmark
from pixie_integrations.cli import main


def test_workload_has_the_requested_token_lengths(tiny_reranker: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_reranker)
    work = build_workload("beir", tokenizer, queries=2, docs_per_query=30)
    assert work.pairs == 60 and len(work.queries) == 2
    for docs, lengths in zip(work.documents, work.doc_tokens):
        for doc, n in zip(docs, lengths):
            assert 16 <= n <= 1024
            assert abs(len(tokenizer(doc, add_special_tokens=False)["input_ids"]) - n) <= 2
    # Log-normal around a 180-token median, as the reference workload.
    assert 100 < sorted(n for lengths in work.doc_tokens for n in lengths)[30] < 300
    assert build_workload("beir", tokenizer, queries=2, docs_per_query=30).documents == work.documents


def test_run_benchmark_times_the_card_path_and_ours_on_the_same_weights(tmp_path: Path) -> None:
    result = run_benchmark(
        workload="latency",
        shape="tiny",
        systems=("card-fp32", "pixie-fp32", "pixie:token_budget=256,reuse_prefix=false", "pixie"),
        device="cpu",
        docs_per_query=8,
        repeats=2,
        show_progress=False,
        model_dir=tmp_path / "tiny",
        memory=False,
    )
    systems = result["systems"]
    assert list(systems) == ["card-fp32", "pixie-fp32", "pixie:token_budget=256,reuse_prefix=false", "pixie"]
    assert result["failed"] == {}
    # Same weights: our float32 path equals the model card's float32 path.
    assert systems["pixie-fp32"]["max_abs_score_diff_vs_card-fp32"] < 1e-5
    assert systems["pixie"]["max_abs_score_diff_vs_card-fp32"] < 2e-2
    # Ranking agreement with the reference, per query: the float32 path ranks as the card does.
    assert systems["pixie-fp32"]["kendall_tau_vs_card-fp32"] > 0.99
    assert systems["pixie-fp32"]["top10_overlap_vs_card-fp32"] == 1.0
    for stats in systems.values():
        assert stats["pairs_per_s"] > 0 and stats["latency_p95_ms"] >= stats["latency_p50_ms"] > 0
    # The JSON says what ran, not the workload's full size.
    assert result["workload"]["pairs"] == 8 and result["workload"]["queries"] == 1
    assert result["workload"]["docs_per_query"] == 8 and result["workload"]["median_tokens"] == 180
    json.dumps(result)
    assert "| pixie-fp32 |" in format_table(result)


def test_bench_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--shape",
            "tiny",
            "--model-dir",
            str(tmp_path / "m"),
            "--workload",
            "latency",
            "--docs",
            "4",
            "--systems",
            "pixie-fp32",
            "pixie",
            "--device",
            "cpu",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "| pixie |" in table
    result = json.loads(out.read_text())
    assert set(result["systems"]) == {"pixie-fp32", "pixie"}
    # The machine is named: CPU model, class, ISA flags, threads, torch build; the table says it too.
    machine = result["machine"]
    assert machine["cpu"]["model"] and machine["cpu"]["class"] in table and machine["cpu"]["model"] in table
    assert isinstance(machine["cpu"]["flags"], list) and machine["torch_build"]["version"] == machine["torch"]
    assert machine["cpu_threads"] >= 1
    # Memory per system, each measured in a process of its own, against that process before loading.
    for stats in result["systems"].values():
        assert stats["peak_rss_mb"] >= stats["idle_rss_mb"] > 0 and stats["rss_over_idle_mb"] > 0
    assert "peak RSS MB" in table


def test_unknown_system_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown system"):
        run_benchmark(shape="tiny", systems=("warp-drive",), device="cpu", show_progress=False, model_dir=tmp_path)


def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / (3 * 2) ** 0.5)  # tau-b: ties shrink it


def test_calibration_pairs_come_from_queries_the_run_does_not_score(tiny_reranker: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_reranker)
    scored = build_workload("beir", tokenizer, queries=2, docs_per_query=5)
    # A run with more queries starts with the same ones: the queries after them are the workload's, unscored.
    more = build_workload("beir", tokenizer, queries=4, docs_per_query=5)
    assert more.queries[:2] == scored.queries and more.documents[:2] == scored.documents
    calibration = calibration_pairs(tokenizer, scored, 8)
    assert calibration.scored == 0 and len(calibration.pairs) == 8
    assert calibration.pairs == [(q, d) for q, docs in zip(more.queries[2:], more.documents[2:]) for d in docs][:8]
    scored_pairs = {(q, d) for q, docs in zip(scored.queries, scored.documents) for d in docs}
    assert not scored_pairs & set(calibration.pairs)
    # The latency workload has one query: nothing is left, so the scored pairs are all it has (and it says so).
    latency = build_workload("latency", tokenizer, docs_per_query=6)
    fallback = calibration_pairs(tokenizer, latency, 4)
    assert fallback.scored == 4 and fallback.pairs == [(latency.queries[0], d) for d in latency.documents[0][:4]]
    assert fallback.as_dict()["pairs_also_scored"] == 4
    # Too few left: what is left, then scored pairs.
    mixed = calibration_pairs(tokenizer, build_workload("beir", tokenizer, queries=19, docs_per_query=3), 5)
    assert mixed.scored == 2 and len(mixed.pairs) == 5
