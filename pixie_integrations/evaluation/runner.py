"""``evaluate()``: the model card's method on one BEIR-layout dataset, for one or several rerankers.

1. a first-stage shortlist of ``candidates`` (100) per judged query: BM25 (bm25s) or a given TREC run;
2. each candidate scored by each reranker against the query (BEIR's ``title + " " + text``), through a score cache;
3. NDCG@1/3/5/10 and their mean (Avg. NDCG) with pytrec_eval, for the first stage and for each reranker;
4. per model ``<out>/<model>/run.trec`` and ``metrics.json``; ``<out>/results.md`` (the card's table) and
   ``<out>/ndcg.png``.

Rerankers rank by their raw logit (``raw=True``): the order of the card's probabilities without the float32 sigmoid's
saturation, which would tie near-certain documents at 1.0 (the card's evaluator ranks by logits too).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..template import DEFAULT_INSTRUCTION
from .cache import ScoreCache
from .data import BeirDataset, DatasetStats, load_beir
from .first_stage import Run, Shortlist, bm25_shortlist, run_shortlist, write_trec_run
from .metrics import DEFAULT_K_VALUES, RunMetrics, evaluate_run
from .report import TableRow, format_table, plot_ndcg, safe_name, write_json

if TYPE_CHECKING:
    from ..scorer import PixieScorer

__all__ = ["EvaluationResult", "FirstStageResult", "ModelResult", "SuiteResult", "evaluate", "evaluate_suite"]

logger = logging.getLogger(__name__)

ModelSpec = Union[str, "os.PathLike[str]", "PixieScorer"]

FIRST_STAGE_DIR = "_first_stage"
"""Output folder of the shortlist (model folders never start with ``_``)."""
CACHE_FILE = "scores.sqlite"
ENGINES = ("local", "ray")
"""Where :func:`evaluate` scores: in this process, or as a Ray Data job."""
# Pairs looked up in the cache together, and scored per model call on a GPU: big enough to batch well there, small
# enough that a crash loses little (each call's scores are committed at once).
_CHUNK_PAIRS = 2048
# Pairs per model call elsewhere: a CPU scores a few dozen pairs a second, and the progress bar (and the cache) should
# move every second or so, not once a minute. The batches inside a call are small on a CPU anyway (token budget).
_CPU_CALL_PAIRS = 32


@dataclass
class FirstStageResult:
    """The shortlist and how good it is on its own (NDCG@k, and Recall@candidates: the most reranking can reach)."""

    source: str
    candidates: int
    metrics: RunMetrics
    seconds: float
    stats: dict[str, int]
    run: Run = field(repr=False)

    @property
    def retriever(self) -> str:
        """``"BM25"`` or ``"run:<file>"``."""
        return "BM25" if self.source == "bm25" else self.source

    @property
    def label(self) -> str:
        """The first stage's row in the table."""
        return f"{self.retriever} first stage (no reranking)"

    @property
    def recall(self) -> float:
        """Recall@candidates: the share of relevant documents the rerankers get to see."""
        return self.metrics.recall[self.candidates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "candidates": self.candidates,
            **self.metrics.to_dict(),
            "seconds": round(self.seconds, 3),
            **self.stats,
        }


@dataclass
class ModelResult:
    """One reranker's figures on one dataset."""

    model: str
    """The model as given: hub id or path (or the scorer's ``model_name``)."""
    name: str
    """File-safe name: the folder of its outputs."""
    metrics: RunMetrics
    first_stage: FirstStageResult = field(repr=False)
    run: Run = field(repr=False)
    pairs: int = 0
    """Candidate pairs reranked."""
    cache_hits: int = 0
    """Pairs answered by the score cache."""
    pairs_scored: int = 0
    """Pairs the model itself scored (0 when everything was cached)."""
    model_calls: int = 0
    """Calls into the model (``score_pairs``)."""
    seconds: float = 0.0
    """Wall time of reranking (cache lookups, model loading and scoring)."""
    instruction: str = DEFAULT_INSTRUCTION
    output_dir: Path | None = None

    @property
    def ndcg(self) -> dict[int, float]:
        return self.metrics.ndcg

    @property
    def avg_ndcg(self) -> float:
        return self.metrics.avg_ndcg

    def to_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        out: dict[str, Any] = {"model": self.model, "name": self.name}
        out.update(self.metrics.to_dict())
        out["gain_avg_ndcg_over_first_stage"] = self.metrics.avg_ndcg - self.first_stage.metrics.avg_ndcg
        out["first_stage"] = self.first_stage.to_dict()
        out.update(
            pairs=self.pairs,
            pairs_scored=self.pairs_scored,
            cache_hits=self.cache_hits,
            model_calls=self.model_calls,
            seconds=round(self.seconds, 3),
            instruction=self.instruction,
            score="logit",
        )
        return out


@dataclass
class EvaluationResult:
    """Everything one :func:`evaluate` call measured."""

    dataset: str
    split: str
    stats: DatasetStats
    first_stage: FirstStageResult
    models: list[ModelResult]
    k_values: tuple[int, ...]
    output_dir: Path | None = None

    def __getitem__(self, model: str) -> ModelResult:
        """A model's result by the id/path given, or by its file-safe name."""
        for result in self.models:
            if model in (result.model, result.name):
                return result
        raise KeyError(model)

    @property
    def table(self) -> str:
        """The card's Markdown table, the first stage as a baseline row."""
        return format_table(_rows(self.models) + [_row(self.first_stage)], self.k_values)

    def to_markdown(self) -> str:
        """``results.md``: the table and what it was measured on."""
        fs = self.first_stage
        lines = [
            f"# Reranking NDCG on {self.dataset} ({self.split})",
            "",
            self.table,
            (
                f"- First stage: {fs.retriever}, top {fs.candidates} per query; "
                f"Recall@{fs.candidates} = {fs.recall:.4f} (the share of relevant documents the rerankers get to see)."
            ),
            (
                f"- Queries evaluated: {fs.metrics.queries_evaluated} "
                f"(skipped without judgments: {self.stats.queries_without_judgments}; "
                f"without candidates, scored 0: {fs.stats.get('queries_without_candidates', 0)})."
            ),
            (
                f"- Documents: {self.stats.documents}; judgments naming unknown documents: "
                f"{self.stats.qrels_unknown_documents}."
            ),
            "- NDCG@k: pytrec_eval `ndcg_cut` (as BEIR/MTEB); Avg. NDCG: mean of "
            + ", ".join(f"NDCG@{k}" for k in self.k_values)
            + ".",
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "dataset_stats": self.stats.to_dict(),
            "first_stage": self.first_stage.to_dict(),
            "models": [m.to_dict() for m in self.models],
        }


@dataclass
class SuiteResult:
    """Several datasets: each one's :class:`EvaluationResult` and the card-style mean over datasets."""

    results: dict[str, EvaluationResult]
    k_values: tuple[int, ...]
    output_dir: Path | None = None

    def mean_rows(self) -> list[TableRow]:
        """Each model's NDCG@k averaged over the datasets (the card's "across all benchmark datasets")."""
        rows: list[TableRow] = []
        names = list(dict.fromkeys(m.model for r in self.results.values() for m in r.models))
        for model in names:
            per = [r[model] for r in self.results.values()]
            ndcg = {k: sum(m.ndcg[k] for m in per) / len(per) for k in self.k_values}
            rows.append(TableRow(model, ndcg, sum(ndcg.values()) / len(ndcg)))
        return rows

    @property
    def table(self) -> str:
        return format_table(self.mean_rows(), self.k_values)

    def to_markdown(self) -> str:
        parts = [f"# Reranking NDCG, mean over {len(self.results)} datasets", "", self.table]
        parts.append("Datasets: " + ", ".join(self.results) + ".\n")
        for result in self.results.values():
            parts.append(result.to_markdown().replace("# ", "## ", 1))
        return "\n".join(parts)


def evaluate(
    data: str | os.PathLike[str] | BeirDataset,
    models: ModelSpec | Sequence[ModelSpec],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    run: str | os.PathLike[str] | Mapping[str, Mapping[str, float]] | None = None,
    candidates: int = 100,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    instruction: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    batch_size: int | None = None,
    token_budget: int | None = None,
    trust_remote_code: bool = False,
    scorer_kwargs: Mapping[str, Any] | None = None,
    ignore_identical_ids: bool = True,
    drop_unknown_qrels: bool = False,
    cache: bool | str | os.PathLike[str] | ScoreCache = True,
    show_progress_bar: bool = True,
    plot: bool = True,
    engine: str = "local",
    ray_options: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Rerank a first-stage shortlist with each model and report NDCG@k as the model card's tables do.

    Args:
        data: A BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) or a loaded dataset.
        models: Hub ids, local folders or ready :class:`~pixie_integrations.PixieScorer` objects.
        output_dir: Where to write ``<model>/run.trec``, ``<model>/metrics.json``, ``results.md``, ``ndcg.png`` and
            the score cache; ``None`` writes nothing (the cache then lives in memory).
        split: The qrels split.
        run: A TREC run file (or ``{qid: {docid: score}}``) to take the shortlist from instead of BM25 (the card's
            Korean tables used a SPLADE shortlist).
        candidates: Shortlist depth per query (the card: 100).
        k_values: NDCG cut-offs; Avg. NDCG is their mean.
        instruction: The reranker's task instruction; ``None``: the card's default. Part of the cache key.
        device, dtype, max_length, batch_size, token_budget, trust_remote_code: Passed to ``PixieScorer``.
        scorer_kwargs: Further ``PixieScorer`` keyword arguments (``revision``, ``local_files_only``...).
        ignore_identical_ids: Drop a candidate whose id equals the query id (BEIR's default, which the card's
            evaluator kept; ArguAna-style datasets need it). Turn it off when query and document ids only collide.
        drop_unknown_qrels: Drop judgments of documents missing from the corpus (BEIR keeps them).
        cache: ``True``: ``<output_dir>/scores.sqlite`` (in memory without ``output_dir``); ``False``: nothing read
            or kept (an in-memory cache still scores a repeated pair once); a path or a :class:`ScoreCache` to share
            one between calls.
        show_progress_bar: A tqdm bar per model while reranking.
        plot: Draw ``ndcg.png``.
        engine: ``"local"`` scores in this process; ``"ray"`` runs the scoring stage as a Ray Data job (an actor
            pool, each actor holding one model; needs the ``ray`` extra), for corpora too large for one
            process. Same scores, cache and metrics; models must be ids or paths, not loaded scorers.
        ray_options: With ``engine="ray"``: :func:`~pixie_integrations.ray.rerank_dataset`'s ``concurrency``
            (actors), ``num_gpus`` / ``num_cpus`` (per actor) and ``rows_per_batch`` (pairs per call).

    Returns:
        The first stage's and each model's metrics (``result["telepix/PIXIE-..."].ndcg[10]``) and the table.
    """
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates <= 0:
        raise ValueError(f"candidates must be a positive int, got {candidates!r}")
    specs = _as_model_list(models)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray" and not all(isinstance(s, (str, os.PathLike)) for s in specs):
        raise ValueError('engine="ray" loads each model on the Ray actors: give hub ids or paths, not loaded scorers')
    ks = tuple(sorted(set(k_values)))
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    out = None if output_dir is None else Path(output_dir)
    dataset = (
        data if isinstance(data, BeirDataset) else load_beir(data, split=split, drop_unknown_qrels=drop_unknown_qrels)
    )
    logger.info(
        "Dataset %s (%s): %d documents, %d judged queries.",
        dataset.name,
        dataset.split,
        len(dataset.corpus),
        len(dataset.queries),
    )

    shortlist = _shortlist(dataset, run, candidates, ignore_identical_ids, show_progress_bar)
    first_metrics = evaluate_run(dataset.qrels, shortlist.run, k_values=ks, recall_at=[candidates])
    first = FirstStageResult(
        source=shortlist.source,
        candidates=candidates,
        metrics=first_metrics,
        seconds=shortlist.seconds,
        stats=shortlist.stats,
        run=shortlist.run,
    )
    if out is not None:
        write_trec_run(out / FIRST_STAGE_DIR / "run.trec", shortlist.run, tag=shortlist.source.replace(":", "_"))
        write_json(
            out / FIRST_STAGE_DIR / "metrics.json", {"dataset": dataset.name, "split": dataset.split, **first.to_dict()}
        )

    score_cache, owned = _open_cache(cache, out)
    results: list[ModelResult] = []
    try:
        names: set[str] = set()
        for spec in specs:
            model_id = _model_id(spec)
            name = _unique(safe_name(model_id), names)
            result = _evaluate_model(
                spec,
                model_id,
                name,
                dataset,
                shortlist,
                first,
                score_cache,
                instruction=instruction,
                ks=ks,
                show_progress_bar=show_progress_bar,
                scorer_options=_scorer_options(
                    device, dtype, max_length, batch_size, token_budget, trust_remote_code, scorer_kwargs
                ),
                ray_options=dict(ray_options or {}) if engine == "ray" else None,
            )
            if out is not None:
                result.output_dir = out / name
                write_trec_run(result.output_dir / "run.trec", result.run, tag=name)
                write_json(
                    result.output_dir / "metrics.json",
                    {
                        "dataset": dataset.name,
                        "split": dataset.split,
                        **result.to_dict(),
                        "dataset_stats": dataset.stats.to_dict(),
                        "settings": _settings(
                            device,
                            dtype,
                            max_length,
                            batch_size,
                            token_budget,
                            candidates,
                            ks,
                            ignore_identical_ids,
                            drop_unknown_qrels,
                        ),
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    },
                )
            results.append(result)
    finally:
        if owned:
            score_cache.close()

    evaluation = EvaluationResult(
        dataset=dataset.name,
        split=dataset.split,
        stats=dataset.stats,
        first_stage=first,
        models=results,
        k_values=ks,
        output_dir=out,
    )
    if out is not None:
        (out / "results.md").write_text(evaluation.to_markdown(), encoding="utf-8")
        write_json(out / "results.json", evaluation.to_dict())
        if plot:
            plot_ndcg(
                _rows(results),
                out / "ndcg.png",
                title=f"NDCG@k on {dataset.name} ({dataset.split})",
                baseline=_row(first),
            )
    return evaluation


def evaluate_suite(
    datasets: Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
    models: ModelSpec | Sequence[ModelSpec],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    runs: Mapping[str, str | os.PathLike[str]] | None = None,
    cache: bool | str | os.PathLike[str] | ScoreCache = True,
    plot: bool = True,
    **kwargs: Any,
) -> SuiteResult:
    """:func:`evaluate` on several datasets, and the table of NDCG@k averaged over them (how the card's tables read).

    Each dataset writes under ``<output_dir>/<dataset name>/``; one score cache serves all. ``runs`` maps a dataset
    name to its TREC run file (datasets without one use BM25). Other arguments are :func:`evaluate`'s.
    """
    if isinstance(datasets, Mapping):
        named = dict(datasets)
    else:
        named = {Path(d).name: d for d in datasets}
        if len(named) != len(datasets):
            raise ValueError("two datasets share a folder name; pass a {name: path} mapping")
    if not named:
        raise ValueError("no dataset to evaluate")
    out = None if output_dir is None else Path(output_dir)
    score_cache, owned = _open_cache(cache, out)
    results: dict[str, EvaluationResult] = {}
    try:
        for name, path in named.items():
            results[name] = evaluate(
                path,
                models,
                output_dir=None if out is None else out / safe_name(name),
                run=(runs or {}).get(name),
                cache=score_cache,
                plot=plot,
                **kwargs,
            )
            results[name].dataset = name
    finally:
        if owned:
            score_cache.close()
    ks = next(iter(results.values())).k_values
    suite = SuiteResult(results=results, k_values=ks, output_dir=out)
    if out is not None:
        (out / "results.md").write_text(suite.to_markdown(), encoding="utf-8")
        write_json(
            out / "results.json",
            {
                "mean": [
                    {"model": r.name, "avg_ndcg": r.avg_ndcg, **{f"ndcg@{k}": v for k, v in r.ndcg.items()}}
                    for r in suite.mean_rows()
                ],
                "datasets": {name: r.to_dict() for name, r in results.items()},
            },
        )
        if plot:
            plot_ndcg(suite.mean_rows(), out / "ndcg.png", title=f"NDCG@k, mean over {len(results)} datasets")
    return suite


# -- internals ---------------------------------------------------------------------------------------------------
def _evaluate_model(
    spec: ModelSpec,
    model_id: str,
    name: str,
    dataset: BeirDataset,
    shortlist: Shortlist,
    first: FirstStageResult,
    cache: ScoreCache,
    *,
    instruction: str,
    ks: tuple[int, ...],
    show_progress_bar: bool,
    scorer_options: dict[str, Any],
    ray_options: dict[str, Any] | None = None,
) -> ModelResult:
    from tqdm.auto import tqdm

    from ..scorer import PixieScorer

    if ray_options is not None:
        return _evaluate_model_on_ray(
            model_id,
            name,
            dataset,
            shortlist,
            first,
            cache,
            instruction=instruction,
            ks=ks,
            scorer_options=scorer_options,
            ray_options=ray_options,
        )
    started = time.perf_counter()
    scorer: PixieScorer | None = spec if isinstance(spec, PixieScorer) else None
    built_here = scorer is None
    model_key = _model_key(spec, scorer_options)
    run: Run = {}
    hits = scored = calls = 0
    progress = tqdm(
        total=shortlist.pairs, desc=f"Reranking {name}", unit="pair", disable=not show_progress_bar, dynamic_ncols=True
    )
    try:
        for chunk in _chunks(shortlist.run, _CHUNK_PAIRS):
            items, found, missing = _look_up(
                dataset, {qid: shortlist.run[qid] for qid in chunk}, cache, model_key, instruction
            )
            chunk_hits = sum(1 for _, _, key in items if key in found)
            hits += chunk_hits
            progress.update(chunk_hits)
            if missing:
                if scorer is None:
                    logger.info("Loading %s.", model_id)
                    scorer = PixieScorer(model_id, instruction=instruction, **scorer_options)
                pending = list(missing.items())
                step = _CHUNK_PAIRS if scorer.device.type == "cuda" else _CPU_CALL_PAIRS
                for start in range(0, len(pending), step):
                    part = pending[start : start + step]
                    scores = scorer.score_pairs([pair for _, pair in part], instruction=instruction, raw=True)
                    calls += 1
                    scored += len(part)
                    fresh = {key: score for (key, _), score in zip(part, scores, strict=True)}
                    cache.put_many(model_key, fresh.items())
                    found.update(fresh)
                    progress.update(len(part))
                progress.update(len(items) - chunk_hits - len(missing))  # repeated pairs, scored once
            for qid in chunk:
                run[qid] = {}
            for qid, doc_id, key in items:
                run[qid][doc_id] = found[key]
    finally:
        progress.close()
        if built_here and scorer is not None:
            del scorer
            _release_memory()
    seconds = time.perf_counter() - started
    metrics = evaluate_run(dataset.qrels, run, k_values=ks)
    logger.info(
        "%s: Avg. NDCG %.4f (first stage %.4f); %d pairs, %d from cache, %d scored in %.1fs.",
        model_id,
        metrics.avg_ndcg,
        first.metrics.avg_ndcg,
        shortlist.pairs,
        hits,
        scored,
        seconds,
    )
    return ModelResult(
        model=model_id,
        name=name,
        metrics=metrics,
        first_stage=first,
        run=run,
        pairs=shortlist.pairs,
        cache_hits=hits,
        pairs_scored=scored,
        model_calls=calls,
        seconds=seconds,
        instruction=instruction,
    )


def _look_up(
    dataset: BeirDataset, run: Mapping[str, Sequence[str]], cache: ScoreCache, model_key: str, instruction: str
) -> tuple[list[tuple[str, str, bytes]], dict[bytes, float], dict[bytes, tuple[str, str]]]:
    """The cache key of each (query id, document id), the scores the cache holds, and the distinct pairs it lacks."""
    items = [
        (qid, doc_id, ScoreCache.key(model_key, instruction, _query_text(dataset, qid), dataset.document_text(doc_id)))
        for qid, docs in run.items()
        for doc_id in docs
    ]
    found = cache.get_many([key for _, _, key in items])
    missing: dict[bytes, tuple[str, str]] = {}
    for qid, doc_id, key in items:
        if key not in found and key not in missing:
            missing[key] = (_query_text(dataset, qid), dataset.document_text(doc_id))
    return items, found, missing


def _evaluate_model_on_ray(
    model_id: str,
    name: str,
    dataset: BeirDataset,
    shortlist: Shortlist,
    first: FirstStageResult,
    cache: ScoreCache,
    *,
    instruction: str,
    ks: tuple[int, ...],
    scorer_options: dict[str, Any],
    ray_options: dict[str, Any],
) -> ModelResult:
    """:func:`_evaluate_model`'s work with the pairs the cache lacks scored in one Ray Data job (same keys, scores)."""
    started = time.perf_counter()
    model_key = _model_key(model_id, scorer_options)
    items, found, missing = _look_up(dataset, shortlist.run, cache, model_key, instruction)
    hits = sum(1 for _, _, key in items if key in found)
    if missing:
        logger.info("Scoring %d pairs with %s on Ray Data.", len(missing), model_id)
        scores = _score_pairs_on_ray(model_id, list(missing.values()), instruction, scorer_options, ray_options)
        fresh = dict(zip(missing, scores))
        for start in range(0, len(fresh), _CHUNK_PAIRS):
            cache.put_many(model_key, list(fresh.items())[start : start + _CHUNK_PAIRS])
        found.update(fresh)
    run: Run = {qid: {} for qid in shortlist.run}
    for qid, doc_id, key in items:
        run[qid][doc_id] = found[key]
    seconds = time.perf_counter() - started
    metrics = evaluate_run(dataset.qrels, run, k_values=ks)
    logger.info("%s: Avg. NDCG %.4f (first stage %.4f) on Ray.", model_id, metrics.avg_ndcg, first.metrics.avg_ndcg)
    return ModelResult(
        model=model_id,
        name=name,
        metrics=metrics,
        first_stage=first,
        run=run,
        pairs=shortlist.pairs,
        cache_hits=hits,
        pairs_scored=len(missing),
        model_calls=1 if missing else 0,
        seconds=seconds,
        instruction=instruction,
    )


def _score_pairs_on_ray(
    model_id: str,
    pairs: list[tuple[str, str]],
    instruction: str,
    scorer_options: dict[str, Any],
    ray_options: dict[str, Any],
) -> list[float]:
    """Raw logits of ``pairs`` (in order) from a Ray Data job: one actor pool, each actor loading the model once."""
    try:
        import ray.data

        from ..ray.data import rerank_dataset
    except ImportError as exc:
        from ..install import install_hint

        raise ImportError(f'engine="ray" needs Ray: {install_hint("ray")}') from exc
    options = {"rows_per_batch": 1024, **ray_options}
    rows = [{"i": i, "query": q, "document": d} for i, (q, d) in enumerate(pairs)]
    scored = rerank_dataset(
        ray.data.from_items(rows),
        model_id,
        document_column="document",
        score_column="score",
        instruction=instruction,
        raw=True,
        **options,
        **{k: v for k, v in scorer_options.items() if k != "show_progress_bar"},
        show_progress_bar=False,
    )
    scores: list[float | None] = [None] * len(pairs)
    for batch in scored.select_columns(["i", "score"]).iter_batches(batch_format="pyarrow", batch_size=None):
        for i, score in zip(batch.column("i").to_pylist(), batch.column("score").to_pylist()):
            scores[i] = float(score)
    lost = sum(s is None for s in scores)
    if lost:
        raise RuntimeError(f"the Ray Data job returned no score for {lost} of {len(pairs)} pairs")
    return scores  # type: ignore[return-value]


def _shortlist(
    dataset: BeirDataset,
    run: str | os.PathLike[str] | Mapping[str, Mapping[str, float]] | None,
    candidates: int,
    ignore_identical_ids: bool,
    show_progress: bool,
) -> Shortlist:
    if run is None:
        # bm25s' own bars only pay off on corpora that take a while to index.
        return bm25_shortlist(
            dataset,
            candidates=candidates,
            ignore_identical_ids=ignore_identical_ids,
            show_progress=show_progress and len(dataset.corpus) >= 20_000,
        )
    given: Run | str | os.PathLike[str]
    given = {q: dict(d) for q, d in run.items()} if isinstance(run, Mapping) else run
    return run_shortlist(dataset, given, candidates=candidates, ignore_identical_ids=ignore_identical_ids)


def _chunks(run: Run, pairs_per_chunk: int) -> Iterator[list[str]]:
    """Query ids grouped so that each group holds about ``pairs_per_chunk`` candidate pairs (whole queries)."""
    chunk: list[str] = []
    size = 0
    for qid, docs in run.items():
        chunk.append(qid)
        size += len(docs)
        if size >= pairs_per_chunk:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _query_text(dataset: BeirDataset, qid: str) -> str:
    # The card's evaluator strips query text; a stray newline would change the prompt's tokens.
    return dataset.queries[qid].strip()


def _as_model_list(models: ModelSpec | Sequence[ModelSpec]) -> list[ModelSpec]:
    if isinstance(models, (str, os.PathLike)) or not isinstance(models, Sequence):
        specs: list[ModelSpec] = [models]  # type: ignore[list-item]
    else:
        specs = list(models)
    if not specs:
        raise ValueError("no model to evaluate")
    return specs


def _model_id(spec: ModelSpec) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    return str(spec.model_name)


def _model_key(spec: ModelSpec, options: Mapping[str, Any]) -> str:
    """What identifies a model's scores in the cache: the checkpoint, its dtype and its length limit.

    The dtype is resolved the way PixieScorer resolves it (cheaply, without loading) so that a rerun with all scores
    cached never loads the model. The device is left out: it moves scores by float noise only.
    """
    from ..loading import resolve_device, resolve_dtype

    if isinstance(spec, (str, os.PathLike)):
        dtype = resolve_dtype(options.get("dtype"), resolve_device(options.get("device")))
        max_length = options.get("max_length") or "model"
        model = os.fspath(spec)
    else:
        dtype, max_length, model = spec.dtype, spec.max_length, spec.model_name
    return f"{model}|{str(dtype).removeprefix('torch.')}|max_length={max_length}|logit"


def _scorer_options(
    device: str | None,
    dtype: str | None,
    max_length: int | None,
    batch_size: int | None,
    token_budget: int | None,
    trust_remote_code: bool,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "device": device,
        "dtype": dtype,
        "max_length": max_length,
        "batch_size": batch_size,
        "token_budget": token_budget,
        "trust_remote_code": trust_remote_code,
        "show_progress_bar": False,
    }  # our own bar counts pairs across the whole run
    options.update(extra or {})
    return options


def _settings(
    device: str | None,
    dtype: str | None,
    max_length: int | None,
    batch_size: int | None,
    token_budget: int | None,
    candidates: int,
    ks: tuple[int, ...],
    ignore_identical_ids: bool,
    drop_unknown_qrels: bool,
) -> dict[str, Any]:
    from .. import __version__

    return {
        "device": device,
        "dtype": dtype,
        "max_length": max_length,
        "batch_size": batch_size,
        "token_budget": token_budget,
        "candidates": candidates,
        "k_values": list(ks),
        "ignore_identical_ids": ignore_identical_ids,
        "drop_unknown_qrels": drop_unknown_qrels,
        "pixie_integrations": __version__,
    }


def _open_cache(cache: bool | str | os.PathLike[str] | ScoreCache, out: Path | None) -> tuple[ScoreCache, bool]:
    """The cache to use and whether this call opened it (and so closes it)."""
    if isinstance(cache, ScoreCache):
        return cache, False
    if cache is True:
        return ScoreCache(None if out is None else out / CACHE_FILE), True
    if cache is False:
        return ScoreCache(None), True
    return ScoreCache(cache), True


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _row(first: FirstStageResult) -> TableRow:
    return TableRow(first.label, first.metrics.ndcg, first.metrics.avg_ndcg)


def _rows(results: Sequence[ModelResult]) -> list[TableRow]:
    return [TableRow(r.model, r.ndcg, r.avg_ndcg) for r in results]


def _release_memory() -> None:
    """Give a finished model's memory back before the next one loads."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
