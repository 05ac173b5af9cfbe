"""The evaluation tool: data checks, the BM25 / run-file first stage, metrics equal to pytrec_eval and ranx, outputs,
the score cache (a rerun makes zero model calls, a crash keeps what was scored), and the ``pixie-rerank eval`` CLI.

Everything runs offline on the shipped ``tests/data/beir_tiny`` dataset and the tiny checkpoints of conftest.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pixie_integrations import PixieScorer
from pixie_integrations.cli import main
from pixie_integrations.evaluation import (
    DataError,
    EvaluationResult,
    ScoreCache,
    TableRow,
    bm25_shortlist,
    evaluate,
    evaluate_run,
    evaluate_suite,
    load_beir,
    plot_ndcg,
    read_run,
    read_trec_run,
    run_shortlist,
    safe_name,
    tokenize_ko_en,
    trec_order,
)
from pixie_integrations.evaluation import scoring as runner_module
from pixie_integrations.install import install_hint

DATA = Path(__file__).parent / "data" / "beir_tiny"
TABLE_HEADER = "| Model Name | Avg. NDCG | NDCG@1 | NDCG@3 | NDCG@5 | NDCG@10 |"


class CountingScorer(PixieScorer):
    """A real PixieScorer that counts the pairs it is asked to score (every public scoring entry point)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.pairs = 0
        self.fail_on_call: int | None = None

    def _count(self, n: int) -> None:
        self.calls += 1
        self.pairs += n
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("simulated crash")

    def score(self, query: str, documents: Sequence[str], **kwargs: Any) -> list[float]:
        self._count(len(documents))
        return super().score(query, documents, **kwargs)

    def score_pairs(self, pairs: Iterable[Any], **kwargs: Any) -> list[float]:
        pairs = list(pairs)
        self._count(len(pairs))
        return super().score_pairs(pairs, **kwargs)


def _scorer(path: Path) -> CountingScorer:
    return CountingScorer(str(path), device="cpu", dtype="float32", show_progress_bar=False)


@pytest.fixture(scope="module")
def dataset() -> Any:
    return load_beir(DATA)


@pytest.fixture(scope="module")
def first_run(tiny_reranker: Path, tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One evaluation of both tiny models, then a second one on the same output folder with fresh scorers."""
    out = tmp_path_factory.mktemp("eval-out")
    scorers = [_scorer(tiny_reranker), _scorer(tiny_encoder)]
    result = evaluate(DATA, scorers, output_dir=out, show_progress_bar=False)
    again = [_scorer(tiny_reranker), _scorer(tiny_encoder)]
    rerun = evaluate(DATA, again, output_dir=out, show_progress_bar=False)
    return {"out": out, "result": result, "scorers": scorers, "rerun": rerun, "rerun_scorers": again}


# -- data ----------------------------------------------------------------------------------------------------------
def test_load_beir_counts_and_joins_like_beir(dataset: Any) -> None:
    stats = dataset.stats
    assert (stats.documents, stats.queries_in_file, stats.queries_judged) == (42, 11, 10)
    assert stats.queries_without_judgments == 1 and "q11" not in dataset.queries
    assert stats.qrels_unknown_documents == 1
    assert dataset.qrels["q03"]["d99"] == 1  # kept, as BEIR keeps it
    assert dataset.qrels["q08"] == {"d38": 2, "d19": 1, "d37": 0}
    # BEIR's reranking text: (title + " " + text).strip()
    assert dataset.document_text("d21").startswith("Synthetic aperture radar Synthetic aperture radar satellites")
    assert dataset.document_text("d03").startswith("TelePIX의 광학")  # no title: no leading space


def test_drop_unknown_qrels() -> None:
    dropped = load_beir(DATA, drop_unknown_qrels=True)
    assert "d99" not in dropped.qrels["q03"] and dropped.stats.qrels_unknown_documents == 1


def _copy_data(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(DATA, target)
    return target


def _replace_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("corrupt", "where", "what"),
    [
        (lambda d: (d / "corpus.jsonl").unlink(), "corpus.jsonl", "file not found"),
        (
            lambda d: _replace_line(d / "corpus.jsonl", 3, '{"_id": "d03", "text": "unterminated'),
            "corpus.jsonl:3",
            "malformed JSON",
        ),
        (lambda d: _replace_line(d / "queries.jsonl", 2, '{"_id": "q02"}'), "queries.jsonl:2", "'text' is missing"),
        (lambda d: _replace_line(d / "corpus.jsonl", 5, '["not", "an", "object"]'), "corpus.jsonl:5", "JSON object"),
        (lambda d: (d / "corpus.jsonl").write_text("\n", encoding="utf-8"), "corpus.jsonl", "corpus is empty"),
        (lambda d: _replace_line(d / "qrels" / "test.tsv", 4, "q03\td16\thigh"), "test.tsv:4", "not an integer"),
        (lambda d: _replace_line(d / "qrels" / "test.tsv", 6, "q03 d26 1"), "test.tsv:6", "3 tab-separated"),
        (lambda d: (d / "qrels" / "test.tsv").rename(d / "qrels" / "dev.tsv"), "test.tsv", "available splits: dev"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, corrupt: Any, where: str, what: str) -> None:
    folder = _copy_data(tmp_path)
    corrupt(folder)
    with pytest.raises(DataError) as info:
        load_beir(folder)
    assert where in str(info.value) and what in str(info.value)


# -- first stage ---------------------------------------------------------------------------------------------------
def test_tokenizer_splits_korean_into_bigrams_and_english_into_words() -> None:
    assert tokenize_ko_en("TelePIX의 위성영상") == ["telepix", "의", "위성", "성영", "영상"]
    # NFKC + casefold: full-width letters and case do not matter; underscores and punctuation split
    assert tokenize_ko_en("ＡＩ Satellite_Data, 2022년") == ["ai", "satellite", "data", "2022", "년"]
    # the same stem matches whatever particle is glued to it
    assert set(tokenize_ko_en("텔레픽스는")) & set(tokenize_ko_en("텔레픽스의")) == {"텔레", "레픽", "픽스"}


def test_bm25_shortlist_finds_the_lexical_match(dataset: Any) -> None:
    shortlist = bm25_shortlist(dataset, candidates=3)
    assert set(shortlist.run) == set(dataset.queries)
    for docs in shortlist.run.values():
        assert 0 < len(docs) <= 3 and all(score > 0 for score in docs.values())
        assert list(docs) == [d for d, _ in trec_order(docs)]  # best first
    assert next(iter(shortlist.run["q04"])) == "d01"  # Korean query, same stem bigrams
    assert next(iter(shortlist.run["q07"])) == "d24"  # "What is a CubeSat?"


def _with_self_documents(tmp_path: Path) -> Path:
    """The tiny dataset plus, ArguAna-style, a document per query with the query's own id and text."""
    folder = _copy_data(tmp_path)
    with (folder / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        for line in (DATA / "queries.jsonl").read_text(encoding="utf-8").splitlines():
            query = json.loads(line)
            handle.write(json.dumps({"_id": query["_id"], "title": "", "text": query["text"]}, ensure_ascii=False))
            handle.write("\n")
    return folder


def test_identical_ids_are_dropped_like_beir_and_can_be_kept(tmp_path: Path) -> None:
    data = load_beir(_with_self_documents(tmp_path))
    dropped = bm25_shortlist(data, candidates=2)
    kept = bm25_shortlist(data, candidates=3, ignore_identical_ids=False)
    assert all(next(iter(docs)) == qid for qid, docs in kept.run.items())  # its own text is the best BM25 match
    for qid, docs in dropped.run.items():  # BEIR's way: fetch k + 1, skip the self-match, keep k
        assert list(docs) == [d for d in kept.run[qid] if d != qid][:2]
    assert dropped.stats["identical_ids_dropped"] == len(data.queries)
    assert dropped.stats["identical_ids_dropped_relevant"] == 0


def test_run_file_shortlist(tmp_path: Path, dataset: Any, caplog: pytest.LogCaptureFixture) -> None:
    run_file = tmp_path / "splade.trec"
    run_file.write_text(
        "q01 Q0 d21 1 9.5 splade\n"
        "q01 Q0 d10 2 9.5 splade\n"  # tie: trec_eval ranks d21 (larger id) first
        "q01 Q0 d01 3 3.0 splade\n"
        "q01 Q0 nope 4 2.0 splade\n"  # not in the corpus: dropped and counted
        "q01 Q0 q01 5 1.0 splade\n"  # the query's own id: dropped
        "q02 Q0 d11 1 1e-3 splade\n"
        "zz Q0 d01 1 1.0 splade\n",  # not a judged query
        encoding="utf-8",
    )
    shortlist = run_shortlist(dataset, run_file, candidates=2)
    assert list(shortlist.run["q01"]) == ["d21", "d10"]
    assert shortlist.run["q02"] == {"d11": 1e-3}
    assert shortlist.run["q05"] == {}  # judged but absent from the run: no candidates, NDCG 0
    assert shortlist.stats["run_unknown_documents"] == 1 and shortlist.stats["run_queries_ignored"] == 1
    assert shortlist.stats["queries_without_candidates"] == 8 and shortlist.stats["identical_ids_dropped"] == 1
    assert shortlist.source == "run:splade.trec"
    metrics = evaluate_run(dataset.qrels, shortlist.run)
    assert metrics.queries_evaluated == 10 and metrics.per_query["q05"]["ndcg_cut_10"] == 0.0  # empty ranking: 0
    json_run = tmp_path / "run.json"
    json_run.write_text(json.dumps({"q01": {"d21": 9.5, "d10": 9.5}}), encoding="utf-8")
    assert read_run(json_run) == {"q01": {"d21": 9.5, "d10": 9.5}}


@pytest.mark.parametrize(
    ("line", "what"),
    [("q01 Q0 d01 1", "expected 6 columns"), ("q01 Q0 d01 1 high run", "not a number"), ("q01 Q0 d01 1 nan r", "NaN")],
)
def test_bad_run_file_names_line(tmp_path: Path, line: str, what: str) -> None:
    path = tmp_path / "bad.trec"
    path.write_text(f"q01 Q0 d02 1 2.0 r\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.trec:2: .*{what}"):
        read_trec_run(path)


@pytest.mark.parametrize("missing", ["bm25s", "pytrec_eval", "matplotlib"])
def test_a_missing_extra_says_how_to_install_it(
    missing: str, dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    calls = {
        "bm25s": lambda: bm25_shortlist(dataset),
        "pytrec_eval": lambda: evaluate_run(dataset.qrels, {"q01": {"d10": 1.0}}),
        "matplotlib": lambda: plot_ndcg([TableRow("m", {1: 0.5}, 0.5)], tmp_path / "x.png"),
    }
    with pytest.raises(ImportError, match=re.escape(install_hint("eval"))):
        calls[missing]()


# -- metrics -------------------------------------------------------------------------------------------------------
def test_trec_order_is_how_pytrec_eval_breaks_ties() -> None:
    qrels = {"q": {"a": 1, "c": 2}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.9}}
    by_rank = {"q": {doc: 1.0 / rank for rank, (doc, _) in enumerate(trec_order(run["q"]), start=1)}}
    assert [d for d, _ in trec_order(run["q"])] == ["d", "c", "b", "a"]
    assert evaluate_run(qrels, run).ndcg == evaluate_run(qrels, by_rank).ndcg


def test_metrics_equal_pytrec_eval_and_ranx(first_run: dict[str, Any], dataset: Any) -> None:
    import pytrec_eval
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    result: EvaluationResult = first_run["result"]
    runs = {"first stage": (result.first_stage.run, result.first_stage.metrics)}
    runs.update({m.name: (m.run, m.metrics) for m in result.models})
    for label, (run, ours) in runs.items():
        # pytrec_eval, called directly, averaged as BEIR does
        per_query = pytrec_eval.RelevanceEvaluator(dataset.qrels, {"ndcg_cut.1,3,5,10", "recall.100"}).evaluate(run)
        assert len(per_query) == ours.queries_evaluated == 10
        for k in (1, 3, 5, 10):
            reference = sum(q[f"ndcg_cut_{k}"] for q in per_query.values()) / len(per_query)
            assert math.isclose(ours.ndcg[k], reference, abs_tol=1e-9), (label, k)
        # ranx: an independent implementation; ranks made explicit in trec_eval's tie order
        ranked = {q: {d: 1.0 / r for r, (d, _) in enumerate(trec_order(docs), start=1)} for q, docs in run.items()}
        metrics = ["ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10"]
        theirs = ranx_evaluate(Qrels.from_dict(dataset.qrels), Run.from_dict(ranked), metrics)
        for k in (1, 3, 5, 10):
            assert math.isclose(ours.ndcg[k], float(theirs[f"ndcg@{k}"]), abs_tol=1e-6), (label, k)
        assert math.isclose(ours.avg_ndcg, sum(ours.ndcg.values()) / 4, abs_tol=1e-12)
    recall = ranx_evaluate(Qrels.from_dict(dataset.qrels), Run.from_dict(result.first_stage.run), "recall@100")
    assert math.isclose(result.first_stage.recall, float(recall), abs_tol=1e-6)
    assert 0 < result.first_stage.recall < 1  # cross-lingual judgments BM25 cannot reach, and d99


# -- outputs -------------------------------------------------------------------------------------------------------
def test_outputs_per_model_and_side_by_side(first_run: dict[str, Any]) -> None:
    out: Path = first_run["out"]
    result: EvaluationResult = first_run["result"]
    assert [m.name for m in result.models] == [safe_name(str(m.model)) for m in result.models]
    for model in result.models:
        folder = out / model.name
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        assert {"ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "avg_ndcg", "queries_evaluated", "seconds"} <= set(metrics)
        assert metrics["avg_ndcg"] == pytest.approx(sum(metrics[f"ndcg@{k}"] for k in (1, 3, 5, 10)) / 4)
        assert metrics["queries_evaluated"] == 10 and metrics["dataset_stats"]["queries_without_judgments"] == 1
        assert metrics["first_stage"]["source"] == "bm25" and "recall@100" in metrics["first_stage"]
        assert metrics["pairs"] == sum(len(docs) for docs in result.first_stage.run.values()) > 0
        lines = (folder / "run.trec").read_text(encoding="utf-8").splitlines()
        assert len(lines) == metrics["pairs"]
        qid, q0, _, rank, score, tag = lines[0].split()
        assert (q0, rank, tag) == ("Q0", "1", model.name) and float(score) == max(model.run[qid].values())
        # the written file gives back the very same metrics
        assert evaluate_run(load_beir(DATA).qrels, read_trec_run(folder / "run.trec")).ndcg == model.ndcg
    assert (out / "_first_stage" / "run.trec").is_file()
    table = (out / "results.md").read_text(encoding="utf-8")
    assert TABLE_HEADER in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Model Name" not in line]
    assert len(rows) == 3  # two models and the first stage
    averages = [float(row.split("|")[2]) for row in rows]
    assert averages == sorted(averages, reverse=True)
    assert all(len(cell.strip().split(".")[1]) == 4 for row in rows for cell in row.split("|")[2:-1])
    assert (out / "ndcg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert safe_name("telepix/PIXIE-Spell-Reranker-Preview-0.6B") == "telepix__PIXIE-Spell-Reranker-Preview-0.6B"
    assert safe_name("../../etc/x y") == "etc__x_y"


# -- cache ---------------------------------------------------------------------------------------------------------
def test_second_run_makes_zero_model_calls(first_run: dict[str, Any]) -> None:
    first, again = first_run["result"], first_run["rerun"]
    assert [s.pairs for s in first_run["scorers"]] == [m.pairs for m in first.models]
    assert all(s.calls >= 1 for s in first_run["scorers"])
    assert [s.calls for s in first_run["rerun_scorers"]] == [0, 0]
    for before, after in zip(first.models, again.models, strict=True):
        assert (after.model_calls, after.pairs_scored, after.cache_hits) == (0, 0, before.pairs)
        assert after.run == before.run and after.ndcg == before.ndcg
    with ScoreCache(first_run["out"] / "scores.sqlite") as cache:
        assert cache.count() == sum(m.pairs for m in first.models)


def test_a_crash_keeps_the_scores_already_computed(
    tiny_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_CHUNK_PAIRS", 20)  # several commits on the tiny dataset
    monkeypatch.setattr(runner_module, "_CPU_CALL_PAIRS", 10_000)  # one model call (and commit) per chunk
    crashing = _scorer(tiny_encoder)
    crashing.fail_on_call = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(DATA, crashing, output_dir=tmp_path, show_progress_bar=False, plot=False)
    with ScoreCache(tmp_path / "scores.sqlite") as cache:
        saved = cache.count()
    assert saved >= 2 * 20  # the two chunks scored before the crash
    resumed = _scorer(tiny_encoder)
    result = evaluate(DATA, resumed, output_dir=tmp_path, show_progress_bar=False, plot=False)
    assert result.models[0].cache_hits == saved
    assert resumed.pairs == result.models[0].pairs_scored == result.models[0].pairs - saved


def test_instruction_is_part_of_the_cache_key(tiny_reranker: Path, tmp_path: Path, dataset: Any) -> None:
    scorer = _scorer(tiny_reranker)
    shortlist = {"q04": dict(list(bm25_shortlist(dataset).run["q04"].items())[:3])}
    evaluate(dataset, scorer, output_dir=tmp_path, run=shortlist, show_progress_bar=False, plot=False)
    evaluate(dataset, scorer, output_dir=tmp_path, run=shortlist, show_progress_bar=False, plot=False)
    assert scorer.pairs == 3
    custom = evaluate(
        dataset,
        scorer,
        output_dir=tmp_path,
        run=shortlist,
        instruction="Find aerospace documents",
        show_progress_bar=False,
        plot=False,
    )
    assert scorer.pairs == 6 and custom.models[0].pairs_scored == 3


def test_suite_averages_datasets_and_shares_the_cache(tiny_encoder: Path, tmp_path: Path) -> None:
    twin = _copy_data(tmp_path)  # same texts under another name: every score is already cached
    scorer = _scorer(tiny_encoder)
    suite = evaluate_suite({"tiny": DATA, "twin": twin}, scorer, output_dir=tmp_path / "out", show_progress_bar=False)
    first, second = suite.results["tiny"].models[0], suite.results["twin"].models[0]
    assert second.pairs_scored == 0 and second.cache_hits == second.pairs == first.pairs_scored == scorer.pairs
    (row,) = suite.mean_rows()
    assert row.ndcg[10] == pytest.approx((first.ndcg[10] + second.ndcg[10]) / 2)
    assert TABLE_HEADER in (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "twin" / safe_name(str(tiny_encoder)) / "run.trec").is_file()


# -- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_eval_in_process(
    tiny_encoder: Path, first_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    argv = [
        "eval",
        "--data",
        str(DATA),
        "--model",
        str(tiny_encoder),
        "--output",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert TABLE_HEADER in printed
    metrics = json.loads((out / safe_name(str(tiny_encoder)) / "metrics.json").read_text(encoding="utf-8"))
    api = first_run["result"][str(tiny_encoder)]
    assert metrics["ndcg@10"] == pytest.approx(api.ndcg[10], abs=1e-6)  # CLI and API agree
    assert metrics["pairs_scored"] == metrics["pairs"]
    assert main(argv) == 0  # again: everything from the cache
    metrics = json.loads((out / safe_name(str(tiny_encoder)) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["pairs_scored"] == 0 and metrics["cache_hits"] == metrics["pairs"]


def test_cli_reports_bad_data_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy_data(tmp_path)
    _replace_line(folder / "queries.jsonl", 4, "{oops")
    code = main(["eval", "--data", str(folder), "--model", "unused", "--output", str(tmp_path / "o")])
    assert code == 2
    assert "queries.jsonl:4: malformed JSON" in capsys.readouterr().err


def test_module_eval_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pixie_integrations", "eval", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0
    assert "--candidates" in done.stdout and "--run" in done.stdout and "--instruction" in done.stdout
