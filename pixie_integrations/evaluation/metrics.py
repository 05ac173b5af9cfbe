"""NDCG@k and Recall@k with ``pytrec_eval`` (trec_eval's own code): the definition BEIR, MTEB and the card's
evaluator use.

- NDCG@k is trec_eval's ``ndcg_cut``: gain = the graded relevance, discount ``log2(rank + 1)``, ideal ranking from
  the qrels (judged documents missing from the corpus included, as in BEIR).
- The mean runs over the queries that are in the run and judged: a judged query with no candidates is in the run with
  an empty ranking and counts 0 (pytrec_eval scores ``{qid: {}}`` as 0, and BEIR's searches produce exactly that).
- Ties rank as trec_eval ranks them: score descending, then document id descending (:func:`trec_order`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_K_VALUES", "RunMetrics", "evaluate_run", "trec_order"]

DEFAULT_K_VALUES: tuple[int, ...] = (1, 3, 5, 10)
"""The model card's cut-offs: NDCG@1, @3, @5, @10; their mean is "Avg. NDCG"."""


def trec_order(doc_scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` pairs in trec_eval's ranking order: score descending, ties by document id descending."""
    return sorted(doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


@dataclass(frozen=True)
class RunMetrics:
    """Mean NDCG@k (and Recall@k) of one run over the evaluated queries."""

    ndcg: dict[int, float]
    avg_ndcg: float
    """Mean of the NDCG@k values: the card's "Avg. NDCG"."""
    recall: dict[int, float]
    queries_evaluated: int
    per_query: dict[str, dict[str, float]] = field(repr=False)
    """pytrec_eval's per-query output: ``{qid: {"ndcg_cut_10": ..., "recall_100": ...}}``."""

    def to_dict(self) -> dict[str, Any]:
        """``{"ndcg@1": ..., "avg_ndcg": ..., "recall@100": ..., "queries_evaluated": ...}``."""
        out: dict[str, Any] = {f"ndcg@{k}": v for k, v in self.ndcg.items()}
        out["avg_ndcg"] = self.avg_ndcg
        out.update({f"recall@{k}": v for k, v in self.recall.items()})
        out["queries_evaluated"] = self.queries_evaluated
        return out


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    recall_at: Iterable[int] = (),
) -> RunMetrics:
    """Score ``run`` against ``qrels`` with pytrec_eval's ``ndcg_cut`` (and ``recall``).

    Args:
        qrels: query id -> document id -> graded relevance.
        run: query id -> document id -> score (higher is better).
        k_values: NDCG cut-offs.
        recall_at: Recall cut-offs (e.g. the shortlist depth, to see what the first stage lets through).

    Raises:
        ValueError: No query of the run is judged, or a cut-off is not a positive integer.
    """
    pytrec_eval = _import_pytrec_eval()
    ks = _cutoffs(k_values, "k_values")
    recall_list = list(recall_at)
    recall_ks = _cutoffs(recall_list, "recall_at") if recall_list else []
    measures = {"ndcg_cut." + ",".join(map(str, ks))}
    if recall_ks:
        measures.add("recall." + ",".join(map(str, recall_ks)))
    # pytrec_eval wants plain dicts of str -> int / float.
    plain_qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    plain_run = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    per_query: dict[str, dict[str, float]] = pytrec_eval.RelevanceEvaluator(plain_qrels, measures).evaluate(plain_run)
    if not per_query:
        raise ValueError("no query of the run has judgments in the qrels: nothing to evaluate")
    count = len(per_query)
    ndcg = {k: sum(scores[f"ndcg_cut_{k}"] for scores in per_query.values()) / count for k in ks}
    recall = {k: sum(scores[f"recall_{k}"] for scores in per_query.values()) / count for k in recall_ks}
    return RunMetrics(
        ndcg=ndcg,
        avg_ndcg=sum(ndcg.values()) / len(ndcg),
        recall=recall,
        queries_evaluated=count,
        per_query=per_query,
    )


def _cutoffs(values: Iterable[int], name: str) -> list[int]:
    given = list(values)
    if not given or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in given):
        raise ValueError(f"{name} must be positive integers, got {given!r}")
    return sorted(set(given))


def _import_pytrec_eval() -> Any:
    try:
        import pytrec_eval
    except ImportError as exc:
        from ..install import install_hint

        raise ImportError(
            f"Evaluation needs pytrec_eval (package pytrec-eval-terrier): {install_hint('eval')}"
        ) from exc
    return pytrec_eval
