"""Scoring one reranker over a shortlist, through the score cache: in this process, or as one Ray Data job.

A pair's cache key holds the model, its dtype, its length limit and, with chunking, the long-document settings, so a
chunked run never reads a truncated run's scores (nor the reverse).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from ..chunking import LongDocuments
from .cache import ScoreCache
from .data import BeirDataset
from .first_stage import Run, Shortlist
from .metrics import evaluate_run
from .results import FirstStageResult, ModelResult

if TYPE_CHECKING:
    from ..scorer import PixieScorer

__all__ = ["ModelSpec", "model_key", "release_memory", "score_model"]

logger = logging.getLogger("pixie_integrations.evaluation.runner")

ModelSpec = Union[str, "os.PathLike[str]", "PixieScorer"]

# Pairs looked up in the cache together, and scored per model call on a GPU: big enough to batch well there, small
# enough that a crash loses little (each call's scores are committed at once).
_CHUNK_PAIRS = 2048
# Pairs per model call elsewhere: a CPU scores a few dozen pairs a second, and the progress bar (and the cache) should
# move every second or so, not once a minute. The batches inside a call are small on a CPU anyway (token budget).
_CPU_CALL_PAIRS = 32


def score_model(
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
    long_documents: LongDocuments | None = None,
) -> ModelResult:
    """One reranker's run over ``shortlist``: cached scores read, the rest scored (raw logits) and cached, metrics.

    ``long_documents``: with chunking, each candidate is scored in chunks (docs/long_documents.md).
    """
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
            long_documents=long_documents,
        )
    started = time.perf_counter()
    scorer: PixieScorer | None = spec if isinstance(spec, PixieScorer) else None
    built_here = scorer is None
    scores_key = model_key(spec, scorer_options, long_documents)
    run: Run = {}
    hits = scored = calls = 0
    progress = tqdm(
        total=shortlist.pairs, desc=f"Reranking {name}", unit="pair", disable=not show_progress_bar, dynamic_ncols=True
    )
    try:
        for chunk in _chunks(shortlist.run, _CHUNK_PAIRS):
            items, found, missing = _look_up(
                dataset, {qid: shortlist.run[qid] for qid in chunk}, cache, scores_key, instruction
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
                    scores = scorer.score_pairs(
                        [pair for _, pair in part], instruction=instruction, raw=True, long_documents=long_documents
                    )
                    calls += 1
                    scored += len(part)
                    fresh = {key: score for (key, _), score in zip(part, scores, strict=True)}
                    cache.put_many(scores_key, fresh.items())
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
            release_memory()
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
        long_documents=_settings_of(long_documents),
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
    long_documents: LongDocuments | None = None,
) -> ModelResult:
    """:func:`score_model`'s work with the pairs the cache lacks scored in one Ray Data job (same keys, scores)."""
    started = time.perf_counter()
    scores_key = model_key(model_id, scorer_options, long_documents)
    items, found, missing = _look_up(dataset, shortlist.run, cache, scores_key, instruction)
    hits = sum(1 for _, _, key in items if key in found)
    if missing:
        logger.info("Scoring %d pairs with %s on Ray Data.", len(missing), model_id)
        scores = _score_pairs_on_ray(
            model_id, list(missing.values()), instruction, scorer_options, ray_options, long_documents
        )
        fresh = dict(zip(missing, scores))
        for start in range(0, len(fresh), _CHUNK_PAIRS):
            cache.put_many(scores_key, list(fresh.items())[start : start + _CHUNK_PAIRS])
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
        long_documents=_settings_of(long_documents),
    )


def _score_pairs_on_ray(
    model_id: str,
    pairs: list[tuple[str, str]],
    instruction: str,
    scorer_options: dict[str, Any],
    ray_options: dict[str, Any],
    long_documents: LongDocuments | None = None,
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
        long_documents=long_documents,
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


def model_key(spec: ModelSpec, options: Mapping[str, Any], long_documents: LongDocuments | None = None) -> str:
    """What identifies a model's scores in the cache: the checkpoint, its dtype, its length limit and, with chunking,
    the long-document settings (a truncating run's key is unchanged, so existing caches stay valid).

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
    key = f"{model}|{str(dtype).removeprefix('torch.')}|max_length={max_length}|logit"
    if long_documents is not None and long_documents.chunked:
        settings = long_documents.to_dict()
        key += "|" + ",".join(f"{name}={settings[name]}" for name in sorted(settings))
    return key


def _settings_of(long_documents: LongDocuments | None) -> dict[str, Any] | None:
    return long_documents.to_dict() if long_documents is not None and long_documents.chunked else None


def release_memory() -> None:
    """Give a finished model's memory back before the next one loads."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
