"""``evaluate()``: the model card's method on one BEIR-layout dataset, for one or several rerankers.

1. a first-stage shortlist of ``candidates`` (100) per judged query: BM25 (bm25s) or a given TREC run;
2. each candidate scored by each reranker against the query (BEIR's ``title + " " + text``), through a score cache;
3. NDCG@1/3/5/10 and their mean (Avg. NDCG) with pytrec_eval, for the first stage and for each reranker;
4. per model ``<out>/<model>/run.trec`` and ``metrics.json``; ``<out>/results.md`` (the card's table) and
   ``<out>/ndcg.png``.

The results live in :mod:`.results`, the scoring through the cache in :mod:`.scoring`.

Rerankers rank by their raw logit (``raw=True``): the order of the card's probabilities without the float32 sigmoid's
saturation, which would tie near-certain documents at 1.0 (the card's evaluator ranks by logits too).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..chunking import LongDocuments, resolve_long_documents
from ..template import DEFAULT_INSTRUCTION
from .cache import ScoreCache
from .data import BeirDataset, load_beir
from .first_stage import Run, Shortlist, bm25_shortlist, run_shortlist, write_trec_run
from .metrics import DEFAULT_K_VALUES, evaluate_run
from .report import plot_ndcg, safe_name, write_json
from .results import EvaluationResult, FirstStageResult, ModelResult, SuiteResult, first_stage_row, model_rows
from .scoring import ModelSpec, score_model

__all__ = ["EvaluationResult", "FirstStageResult", "ModelResult", "SuiteResult", "evaluate", "evaluate_suite"]

logger = logging.getLogger(__name__)

FIRST_STAGE_DIR = "_first_stage"
"""Output folder of the shortlist (model folders never start with ``_``)."""
CACHE_FILE = "scores.sqlite"
ENGINES = ("local", "ray")
"""Where :func:`evaluate` scores: in this process, or as a Ray Data job."""


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
    long_documents: str | LongDocuments | None = None,
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
        long_documents: ``"truncate"`` (the default), ``"chunk"`` or a :class:`~pixie_integrations.LongDocuments`:
            how candidates longer than ``max_length`` are scored (docs/long_documents.md). Part of the cache key.

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
    chunking = resolve_long_documents(long_documents)  # a bad value fails before any work
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
            result = score_model(
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
                long_documents=chunking,
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
                model_rows(results),
                out / "ndcg.png",
                title=f"NDCG@k on {dataset.name} ({dataset.split})",
                baseline=first_stage_row(first),
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
