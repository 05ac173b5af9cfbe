"""What :func:`~pixie_integrations.evaluation.evaluate` returns: the first stage's, each reranker's and a suite's
figures, and the tables and JSON they write."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..template import DEFAULT_INSTRUCTION
from .data import DatasetStats
from .first_stage import Run
from .metrics import RunMetrics
from .report import TableRow, format_table

__all__ = ["EvaluationResult", "FirstStageResult", "ModelResult", "SuiteResult", "first_stage_row", "model_rows"]


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
    long_documents: dict[str, Any] | None = None
    """With chunking: the long-document settings the model scored with (``LongDocuments.to_dict()``)."""

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
        if self.long_documents is not None:
            out["long_documents"] = self.long_documents
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
        return format_table(model_rows(self.models) + [first_stage_row(self.first_stage)], self.k_values)

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


def first_stage_row(first: FirstStageResult) -> TableRow:
    return TableRow(first.label, first.metrics.ndcg, first.metrics.avg_ndcg)


def model_rows(results: Sequence[ModelResult]) -> list[TableRow]:
    return [TableRow(r.model, r.ndcg, r.avg_ndcg) for r in results]
