"""Evaluation: the model card's NDCG method (a first-stage shortlist of 100, each candidate reranked, NDCG@1/3/5/10
and their mean) on any BEIR/MTEB-format dataset, for several rerankers side by side.

``from pixie_integrations.evaluation import evaluate`` or ``pixie-rerank eval``; see ``docs/evaluation.md``.
The modules here import bm25s, pytrec_eval, matplotlib and torch only when they run (the ``eval`` extra).
"""

from __future__ import annotations

from .cache import ScoreCache
from .data import BeirDataset, DataError, DatasetStats, Document, document_text, load_beir
from .first_stage import (
    Shortlist,
    bm25_shortlist,
    read_run,
    read_trec_run,
    run_shortlist,
    tokenize_ko_en,
    write_trec_run,
)
from .long_documents import LongDocumentComparison, compare_long_documents, parse_strategies
from .metrics import DEFAULT_K_VALUES, RunMetrics, evaluate_run, trec_order
from .report import TableRow, format_table, plot_ndcg, safe_name
from .results import EvaluationResult, FirstStageResult, ModelResult, SuiteResult
from .runner import evaluate, evaluate_suite

__all__ = [
    "DEFAULT_K_VALUES",
    "BeirDataset",
    "DataError",
    "DatasetStats",
    "Document",
    "EvaluationResult",
    "FirstStageResult",
    "LongDocumentComparison",
    "ModelResult",
    "RunMetrics",
    "ScoreCache",
    "Shortlist",
    "SuiteResult",
    "TableRow",
    "bm25_shortlist",
    "compare_long_documents",
    "document_text",
    "evaluate",
    "evaluate_run",
    "evaluate_suite",
    "format_table",
    "load_beir",
    "parse_strategies",
    "plot_ndcg",
    "read_run",
    "read_trec_run",
    "run_shortlist",
    "safe_name",
    "tokenize_ko_en",
    "trec_order",
    "write_trec_run",
]
