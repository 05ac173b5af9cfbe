"""The user's own pairs for quantizing: a calibration split and a held-out check split, from a BEIR folder or JSONL.

- A BEIR/MTEB folder (what ``pixie-rerank eval`` reads: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``):
  each judged query's candidates are its BM25 shortlist (bm25s, as ``eval`` builds it), and the qrels make NDCG@10
  part of the check.
- A JSONL file, one query per line: ``{"query": "...", "documents": ["...", ...]}``, optionally with
  ``"relevance": [grade, ...]`` (one integer per document) for NDCG@10; documents may also be
  ``{"title": ..., "text": ...}`` objects (joined as BEIR joins them).

Queries are shuffled with a seed and split: the first go to calibration, the next to the check. No query is in both,
so the gate judges the model on pairs it was not calibrated on.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.data import DataError, document_text, load_beir, read_jsonl_objects

__all__ = ["QuantizationData", "QueryCandidates", "load_quantization_data"]


@dataclass(frozen=True)
class QueryCandidates:
    """One query and the documents a first stage handed it."""

    qid: str
    query: str
    doc_ids: tuple[str, ...]
    documents: tuple[str, ...]


@dataclass
class QuantizationData:
    """Calibration and check queries, and the judgments where the data has them."""

    calibration: list[QueryCandidates]
    check: list[QueryCandidates]
    qrels: dict[str, dict[str, int]] | None = None
    """query id -> document id -> grade, for NDCG@10 on the check split; ``None``: no judgments."""
    source: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def calibration_pairs(self) -> int:
        return sum(len(q.documents) for q in self.calibration)

    @property
    def check_pairs(self) -> int:
        return sum(len(q.documents) for q in self.check)


def load_quantization_data(
    path: str | os.PathLike[str],
    *,
    calibration_queries: int = 16,
    calibration_documents: int = 8,
    check_queries: int = 32,
    candidates: int = 20,
    split: str = "test",
    seed: int = 0,
) -> QuantizationData:
    """Read ``path`` (a BEIR folder or a JSONL file) and split its queries.

    Args:
        calibration_queries: Queries whose pairs calibrate the smoothing and the sensitivity pass.
        calibration_documents: Of each calibration query's candidates, how many (the first ones) are used.
        check_queries: Held-out queries the quality gate scores with both models (all their candidates).
        candidates: Candidates per query (the BM25 depth for a BEIR folder; the first ones of a JSONL line).
        split: The qrels split of a BEIR folder.
        seed: Shuffles the queries before splitting.

    Raises:
        DataError: The data cannot be read, or has too few queries for both splits.
    """
    for name, value in (
        ("calibration_queries", calibration_queries),
        ("check_queries", check_queries),
        ("candidates", candidates),
        ("calibration_documents", calibration_documents),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    folder = Path(path)
    if folder.is_dir():
        queries, qrels, source = _beir_queries(folder, split=split, candidates=candidates)
    elif folder.is_file():
        queries, qrels, source = _jsonl_queries(folder, candidates=candidates)
    else:
        raise DataError(
            "no such file or folder: give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a "
            "JSONL file of queries and documents",
            folder,
        )
    queries = [q for q in queries if q.documents]
    if len(queries) < 2:
        raise DataError(
            f"{len(queries)} query with candidates: at least 2 are needed (one to calibrate, one to check)", folder
        )
    random.Random(seed).shuffle(queries)
    n_cal = (
        min(calibration_queries, len(queries) // 2)
        if len(queries) < calibration_queries + check_queries
        else calibration_queries
    )
    calibration = [
        QueryCandidates(q.qid, q.query, q.doc_ids[:calibration_documents], q.documents[:calibration_documents])
        for q in queries[:n_cal]
    ]
    check = queries[n_cal : n_cal + check_queries]
    if qrels is not None:
        qrels = {q.qid: qrels.get(q.qid, {}) for q in check}
        if not any(grade > 0 for docs in qrels.values() for grade in docs.values()):
            qrels = None  # nothing relevant among the judged check queries: NDCG would be 0 for both
    stats = {"queries": len(queries), "calibration_queries": len(calibration), "check_queries": len(check)}
    return QuantizationData(calibration=calibration, check=check, qrels=qrels, source=source, stats=stats)


def _beir_queries(
    folder: Path, *, split: str, candidates: int
) -> tuple[list[QueryCandidates], dict[str, dict[str, int]], str]:
    from ..evaluation.first_stage import bm25_shortlist

    dataset = load_beir(folder, split=split)
    shortlist = bm25_shortlist(dataset, candidates=candidates)
    queries = [
        QueryCandidates(qid, dataset.queries[qid], tuple(docs), tuple(dataset.document_text(d) for d in docs))
        for qid, docs in shortlist.run.items()
    ]
    return queries, dataset.qrels, f"BEIR folder {folder} ({split}), BM25 top {candidates}"


def _jsonl_queries(
    path: Path, *, candidates: int
) -> tuple[list[QueryCandidates], dict[str, dict[str, int]] | None, str]:
    queries: list[QueryCandidates] = []
    qrels: dict[str, dict[str, int]] = {}
    judged = True
    for line_no, obj in read_jsonl_objects(path):
        query, documents = _jsonl_row(obj, path, line_no)
        qid = str(obj.get("id", f"q{line_no}"))
        doc_ids = tuple(f"{qid}-d{i}" for i in range(len(documents)))[:candidates]
        queries.append(QueryCandidates(qid, query, doc_ids, tuple(documents[:candidates])))
        relevance = obj.get("relevance")
        if relevance is None:
            judged = False
            continue
        if (
            not isinstance(relevance, list)
            or len(relevance) != len(documents)
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in relevance)
        ):
            raise DataError('"relevance" must be a list of integers, one per document', path, line_no)
        qrels[qid] = {doc_id: grade for doc_id, grade in zip(doc_ids, relevance)}
    return queries, (qrels if judged and qrels else None), f"JSONL {path}"


def _jsonl_row(obj: dict[str, Any], path: Path, line_no: int) -> tuple[str, list[str]]:
    if not isinstance(obj.get("query"), str) or not obj["query"].strip():
        raise DataError('each line must be an object with a non-empty "query" string', path, line_no)
    raw = obj.get("documents")
    if not isinstance(raw, list) or not raw:
        raise DataError('"documents" must be a non-empty list', path, line_no)
    documents = []
    for doc in raw:
        if isinstance(doc, dict):
            doc = document_text(doc.get("title"), doc.get("text"))
        if not isinstance(doc, str) or not doc.strip():
            raise DataError('each document must be a non-empty string or a {"title", "text"} object', path, line_no)
        documents.append(doc)
    return obj["query"], documents
