"""The quality gate: the quantized model against the unquantized one, on held-out queries of the user's own data.

Four figures, each per query and then summarised:

- NDCG@10 of both rankings against the qrels (when the data has judgments), and the drop;
- Kendall's tau-b between the two models' scores of a query's candidates (the whole order, not just the top);
- top-10 overlap (how many of the reference's ten best the quantized model also puts in its ten best);
- the largest absolute difference of a score (a probability in [0, 1]).

The gate holds when the NDCG@10 drop is at most ``max_ndcg_drop`` (0.005 absolute by default: below what the model
card's tables resolve, and well below the gaps between the rerankers they compare) and the mean Kendall tau is at
least ``min_kendall_tau`` (0.95 by default: about one swapped pair in forty, mostly among near-equal scores, where
a first stage's order is just as arbitrary). Without qrels only the tau condition applies, and the report says so.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..install import install_hint
from .data import QueryCandidates

__all__ = ["GateReport", "GateThresholds", "compare_scores", "require_gate_modules"]


@dataclass(frozen=True)
class GateThresholds:
    """What the quantized model must reach to be written."""

    max_ndcg_drop: float = 0.005
    """Largest allowed fall of mean NDCG@10 (absolute), when the data has qrels."""
    min_kendall_tau: float = 0.95
    """Smallest allowed mean Kendall tau-b between the two models' per-query scores."""


@dataclass
class GateReport:
    """The gate's figures and verdict, as written into the quantized folder."""

    passed: bool
    figures: dict[str, float]
    thresholds: GateThresholds
    failed: list[str] = field(default_factory=list)
    """One sentence per condition that failed, naming the figure and the threshold."""
    queries: int = 0
    pairs: int = 0
    judged: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["thresholds"] = asdict(self.thresholds)
        return data

    def lines(self) -> list[str]:
        """A human-readable table of the figures, one per line."""
        f = self.figures
        out = [f"held-out queries: {self.queries} ({self.pairs} pairs)"]
        if self.judged:
            out.append(
                f"NDCG@10: unquantized {f['ndcg@10_reference']:.4f}, int8 {f['ndcg@10_quantized']:.4f}, "
                f"drop {f['ndcg@10_drop']:+.4f} (allowed {self.thresholds.max_ndcg_drop})"
            )
        out.append(
            f"Kendall tau per query: mean {f['kendall_tau_mean']:.4f}, min {f['kendall_tau_min']:.4f} "
            f"(required mean {self.thresholds.min_kendall_tau})"
        )
        out.append(f"top-10 overlap: mean {f['top10_overlap_mean']:.3f}, min {f['top10_overlap_min']:.3f}")
        out.append(f"largest score difference: {f['max_score_diff']:.4g} (mean {f['mean_score_diff']:.3g})")
        out += self.notes
        return out


def require_gate_modules(*, judged: bool) -> None:
    """Fail now, before any model is loaded, if the gate's libraries are missing (scipy for Kendall tau;
    pytrec_eval for NDCG when the data has judgments): otherwise the whole calibration would run first."""
    needed = ["scipy"] + (["pytrec_eval"] if judged else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"the quality gate needs {', '.join(missing)}, not installed: {install_hint('eval')}")


def _kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    if len(a) < 2:
        return 1.0
    tau = kendalltau(a, b).statistic  # tau-b: ties count as neither agreeing nor disagreeing
    return 1.0 if math.isnan(tau) else float(tau)  # NaN: one side is all ties


def _top_overlap(a: Sequence[float], b: Sequence[float], k: int = 10) -> float:
    top = min(k, len(a))
    best_a = set(sorted(range(len(a)), key=lambda i: -a[i])[:top])
    best_b = set(sorted(range(len(b)), key=lambda i: -b[i])[:top])
    return len(best_a & best_b) / top


def _ndcg10(qrels: dict[str, dict[str, int]], queries: Sequence[QueryCandidates], scores: list[list[float]]) -> float:
    from ..evaluation.metrics import evaluate_run

    run = {q.qid: dict(zip(q.doc_ids, s)) for q, s in zip(queries, scores)}
    return evaluate_run(qrels, run, k_values=[10]).ndcg[10]


def compare_scores(
    queries: Sequence[QueryCandidates],
    reference: list[list[float]],
    quantized: list[list[float]],
    *,
    qrels: dict[str, dict[str, int]] | None,
    thresholds: GateThresholds = GateThresholds(),
) -> GateReport:
    """The gate's figures for two models' scores (probabilities) of the same queries' candidates, and its verdict."""
    taus = [_kendall_tau(q, r) for q, r in zip(quantized, reference)]
    overlaps = [_top_overlap(q, r) for q, r in zip(quantized, reference)]
    diffs = [abs(a - b) for q, r in zip(quantized, reference) for a, b in zip(q, r)]
    figures = {
        "kendall_tau_mean": statistics.mean(taus),
        "kendall_tau_min": min(taus),
        "top10_overlap_mean": statistics.mean(overlaps),
        "top10_overlap_min": min(overlaps),
        "max_score_diff": max(diffs),
        "mean_score_diff": statistics.mean(diffs),
    }
    failed, notes = [], []
    if figures["kendall_tau_mean"] < thresholds.min_kendall_tau:
        failed.append(
            f"mean Kendall tau {figures['kendall_tau_mean']:.4f} is below the required {thresholds.min_kendall_tau}"
        )
    if qrels is not None:
        ref_ndcg, quant_ndcg = _ndcg10(qrels, queries, reference), _ndcg10(qrels, queries, quantized)
        figures.update(
            {"ndcg@10_reference": ref_ndcg, "ndcg@10_quantized": quant_ndcg, "ndcg@10_drop": ref_ndcg - quant_ndcg}
        )
        if ref_ndcg - quant_ndcg > thresholds.max_ndcg_drop:
            failed.append(
                f"NDCG@10 drops by {ref_ndcg - quant_ndcg:.4f} ({ref_ndcg:.4f} -> {quant_ndcg:.4f}), more than the "
                f"allowed {thresholds.max_ndcg_drop}"
            )
    else:
        notes.append("no relevance judgments in the check split: NDCG@10 not checked, only the ranking agreement")
    return GateReport(
        passed=not failed,
        figures=figures,
        thresholds=thresholds,
        failed=failed,
        queries=len(queries),
        pairs=len(diffs),
        judged=qrels is not None,
        notes=notes,
    )
