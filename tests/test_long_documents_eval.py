"""Long documents in the evaluation: ``eval --long-documents chunk``, the strategy comparison in one table, the cache
keeping chunked and truncated scores apart, and the flags' one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytrec_eval")
pytest.importorskip("bm25s")

from pixie_integrations import LongDocuments, PixieScorer
from pixie_integrations.cli import main
from pixie_integrations.evaluation import ScoreCache, compare_long_documents, evaluate, parse_strategies

DATA = Path(__file__).parent / "data" / "beir_tiny"
COMMON = ["--device", "cpu", "--dtype", "float32", "--no-progress", "--no-plot"]


def _model_metrics(out: Path) -> Path:
    """The model's metrics.json (not the first stage's, in ``_first_stage/``)."""
    return next(p for p in out.glob("*/metrics.json") if not p.parent.name.startswith("_"))


def test_chunks_as_long_as_the_documents_give_the_truncate_metrics(tiny_scorer: PixieScorer) -> None:
    whole = evaluate(DATA, tiny_scorer, cache=False, show_progress_bar=False, plot=False)
    same = evaluate(
        DATA,
        tiny_scorer,
        cache=False,
        show_progress_bar=False,
        plot=False,
        long_documents=LongDocuments("chunk", chunk_tokens=100_000),
    )
    assert same.models[0].run == whole.models[0].run  # the very same logits, so the same metrics
    small = evaluate(
        DATA,
        tiny_scorer,
        cache=False,
        show_progress_bar=False,
        plot=False,
        long_documents=LongDocuments("chunk", chunk_tokens=8),
    )
    assert small.models[0].run != whole.models[0].run  # 8-token chunks do change the scores
    assert small.models[0].to_dict()["long_documents"]["chunk_tokens"] == 8


def test_the_cache_keeps_chunked_and_truncated_scores_apart(tiny_scorer: PixieScorer, tmp_path: Path) -> None:
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        kwargs = {"cache": cache, "show_progress_bar": False, "plot": False}
        first = evaluate(DATA, tiny_scorer, **kwargs).models[0]
        chunked = evaluate(DATA, tiny_scorer, long_documents=LongDocuments("chunk", chunk_tokens=8), **kwargs).models[0]
        assert chunked.cache_hits == 0 and chunked.pairs_scored == first.pairs_scored  # not the truncated scores
        again = evaluate(DATA, tiny_scorer, long_documents=LongDocuments("chunk", chunk_tokens=8), **kwargs).models[0]
        assert again.pairs_scored == 0 and again.run == chunked.run
        other = evaluate(
            DATA, tiny_scorer, long_documents=LongDocuments("chunk", chunk_tokens=8, aggregate="mean"), **kwargs
        )
        assert other.models[0].cache_hits == 0


def test_cli_eval_long_documents_and_the_comparison_table(
    tiny_reranker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "chunked"
    argv = ["eval", "--data", str(DATA), "--model", str(tiny_reranker), "--output", str(out), *COMMON]
    assert main([*argv, "--long-documents", "chunk", "--chunk-tokens", "8", "--aggregate", "mean"]) == 0
    metrics = json.loads(_model_metrics(out).read_text(encoding="utf-8"))
    assert metrics["long_documents"] == LongDocuments("chunk", chunk_tokens=8, aggregate="mean").to_dict()
    capsys.readouterr()

    compared = tmp_path / "compared"
    argv = ["eval", "--data", str(DATA), "--model", str(tiny_reranker), "--output", str(compared), *COMMON]
    assert main([*argv, "--compare-long-documents", "chunk:8,chunk:8:mean,chunk:16:max:4"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "NDCG@1" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| truncate (whole document up to max_length)",
        "| chunk 8 max",
        "| chunk 8 mean",
        "| chunk 16 max, overlap 4",
    ]
    saved = json.loads((compared / "long_documents.json").read_text(encoding="utf-8"))
    assert [s["long_documents"]["strategy"] for s in saved["strategies"]] == ["truncate", "chunk", "chunk", "chunk"]
    # The truncate row is what a plain eval of the same model reports.
    plain = tmp_path / "plain"
    assert main(["eval", "--data", str(DATA), "--model", str(tiny_reranker), "--output", str(plain), *COMMON]) == 0
    plain_metrics = json.loads(_model_metrics(plain).read_text(encoding="utf-8"))
    assert saved["strategies"][0]["ndcg@10"] == pytest.approx(plain_metrics["ndcg@10"], abs=1e-9)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--compare-long-documents", "chunk:abc"], "'chunk:abc'"),
        (["--compare-long-documents", "truncate"], "names no chunking strategy"),
        (["--compare-long-documents", "chunk:8:median"], "aggregate must be one of"),
        (["--chunk-tokens", "16"], "--chunk-tokens only apply with --long-documents='chunk'"),
        (["--long-documents", "chunk", "--chunk-tokens", "8", "--chunk-overlap", "8"], "--chunk-overlap=8 must be"),
        (["--compare-long-documents", "chunk:8", "--long-documents", "chunk"], "leave --long-documents out"),
    ],
)
def test_bad_long_document_flags_exit_2_with_one_line(
    flags: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--data", str(DATA), "--model", "unused", "--output", str(tmp_path / "o"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_parse_strategies_and_the_api(tiny_scorer: PixieScorer) -> None:
    assert parse_strategies("chunk:512:mean:64,truncate") == [
        LongDocuments(),
        LongDocuments("chunk", chunk_tokens=512, aggregate="mean", chunk_overlap=64),
    ]
    comparison = compare_long_documents(
        DATA, tiny_scorer, ["chunk:8"], cache=False, show_progress_bar=False, plot=False
    )
    assert len(comparison.results) == 2 and "vs truncate" in comparison.table


# -- the bench ------------------------------------------------------------------------------------------------------
def test_bench_times_chunked_beside_whole_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "long.json"
    argv = ["bench", "--shape", "tiny", "--model-dir", str(tmp_path / "m"), "--workload", "long-8k"]
    argv += ["--queries", "1", "--docs", "2", "--device", "cpu", "--no-progress", "--no-memory", "--json", str(out)]
    assert main([*argv, "--systems", "pixie", "pixie-chunk", "pixie-chunk:chunk_tokens=64,aggregate=mean"]) == 0
    table = capsys.readouterr().out
    assert "CPU-time speed-up" in table and "| pixie-chunk |" in table
    result = json.loads(out.read_text())
    assert result["reference"] == "pixie" and result["workload"]["name"] == "long-8k"
    assert result["workload"]["mean_tokens_per_pair"] > 6000  # documents as long as MultiLongDocRetrieval's
    for name in ("pixie-chunk", "pixie-chunk:chunk_tokens=64,aggregate=mean"):
        stats = result["systems"][name]
        # Documents per second against the whole-document system of the same run, and how far the scores move.
        assert stats["speedup_vs_pixie"] > 0 and stats["cpu_time_speedup_vs_pixie"] > 0
        assert stats["max_abs_score_diff_vs_pixie"] > 0 and "kendall_tau_vs_pixie" in stats
    assert result["systems"]["pixie"]["max_abs_score_diff_vs_pixie"] == 0


def test_bench_refuses_bad_chunk_settings_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--shape", "tiny", "--systems", "pixie-chunk:aggregate=median", "--no-progress"])
    assert "aggregate must be one of" in capsys.readouterr().err
