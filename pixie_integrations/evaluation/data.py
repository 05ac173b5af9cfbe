"""Loading and checking a BEIR-layout dataset: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

The rules follow BEIR's ``GenericDataLoader`` (what MTEB and the model card's evaluator feed to ``pytrec_eval``), with
clear errors where BEIR would crash or silently misread:

- ids are strings (an integer ``_id`` is turned into its decimal string, as the qrels file holds text);
- a document's text for the reranker is ``(title + " " + text).strip()``, BEIR's reranking join;
- only queries with at least one judgment are evaluated (BEIR keeps ``{qid: queries[qid] for qid in qrels}``);
  the others are counted;
- a qrels row naming a document missing from the corpus is kept (BEIR and MTEB keep it: it still counts in the ideal
  ranking, against every model alike) unless ``drop_unknown_qrels``; it is warned about and counted either way;
- a qrels row naming a query missing from ``queries.jsonl`` is dropped (there is no text to score), warned, counted.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BeirDataset", "DataError", "DatasetStats", "Document", "document_text", "load_beir", "read_jsonl_objects"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset or run file that cannot be read; names the file and, where it applies, the line."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, line: int | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.line = line
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(f"{where}{message}")


@dataclass(frozen=True)
class Document:
    """One corpus entry."""

    title: str
    text: str

    @property
    def joined(self) -> str:
        """The text the reranker reads: BEIR's ``(title + " " + text).strip()``."""
        return document_text(self.title, self.text)


def document_text(title: str | None, text: str | None) -> str:
    """Join a title and a text the way BEIR's reranker does: ``(title + " " + text).strip()``."""
    return ((title or "") + " " + (text or "")).strip()


@dataclass
class DatasetStats:
    """What loading kept, dropped and warned about (all counts), written into ``metrics.json``."""

    documents: int = 0
    queries_in_file: int = 0
    queries_judged: int = 0
    queries_without_judgments: int = 0
    qrels_rows: int = 0
    qrels_unknown_documents: int = 0
    qrels_unknown_queries: int = 0
    qrels_duplicates: int = 0
    duplicate_document_ids: int = 0
    duplicate_query_ids: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BeirDataset:
    """A loaded BEIR-layout dataset, restricted to the judged queries of one split."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    """Judged queries only: id -> text."""
    qrels: dict[str, dict[str, int]]
    """query id -> document id -> graded relevance (``pytrec_eval``'s input shape)."""
    name: str = "dataset"
    split: str = "test"
    stats: DatasetStats = field(default_factory=DatasetStats)

    def document_text(self, doc_id: str) -> str:
        """The reranker's text of one document (title and text joined as BEIR does)."""
        return self.corpus[doc_id].joined


def load_beir(
    path: str | os.PathLike[str],
    *,
    split: str = "test",
    drop_unknown_qrels: bool = False,
) -> BeirDataset:
    """Load ``path/corpus.jsonl``, ``path/queries.jsonl`` and ``path/qrels/<split>.tsv``.

    Args:
        path: The dataset folder.
        split: Which qrels file to use (``test``, ``dev``, ``train``...).
        drop_unknown_qrels: Drop judgments naming documents missing from the corpus instead of keeping them (BEIR
            keeps them: they lower every model's NDCG alike).

    Raises:
        DataError: A missing file, malformed JSON or TSV line, a missing id or text, an empty corpus, or no query
            with judgments. The message names the file and line.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError("dataset folder not found (expected corpus.jsonl, queries.jsonl, qrels/<split>.tsv)", root)
    stats = DatasetStats()
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for required in (corpus_path, queries_path):
        if not required.is_file():
            raise DataError("file not found", required)
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        hint = f"; available splits: {', '.join(available)}" if available else ""
        raise DataError(f"file not found (split {split!r}){hint}", qrels_path)

    corpus: dict[str, Document] = {}
    for line_no, obj in read_jsonl_objects(corpus_path):
        doc_id = _require_id(obj, corpus_path, line_no)
        text = _require_text(obj, "text", corpus_path, line_no)
        title = obj.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"'title' must be a string, got {type(title).__name__}", corpus_path, line_no)
        if doc_id in corpus:
            stats.duplicate_document_ids += 1
        corpus[doc_id] = Document(title=title or "", text=text)
    if not corpus:
        raise DataError("the corpus is empty: no documents to rank", corpus_path)
    if stats.duplicate_document_ids:
        logger.warning(
            "%s: %d duplicate document ids; the last line of each wins.", corpus_path, stats.duplicate_document_ids
        )

    all_queries: dict[str, str] = {}
    for line_no, obj in read_jsonl_objects(queries_path):
        query_id = _require_id(obj, queries_path, line_no)
        if query_id in all_queries:
            stats.duplicate_query_ids += 1
        all_queries[query_id] = _require_text(obj, "text", queries_path, line_no)
    if not all_queries:
        raise DataError("no queries", queries_path)
    if stats.duplicate_query_ids:
        logger.warning(
            "%s: %d duplicate query ids; the last line of each wins.", queries_path, stats.duplicate_query_ids
        )

    qrels: dict[str, dict[str, int]] = {}
    unknown_docs: list[tuple[int, str, str]] = []
    unknown_queries: set[str] = set()
    for line_no, query_id, doc_id, score in _read_qrels(qrels_path):
        stats.qrels_rows += 1
        if query_id not in all_queries:
            stats.qrels_unknown_queries += 1
            unknown_queries.add(query_id)
            continue
        if doc_id not in corpus:
            stats.qrels_unknown_documents += 1
            unknown_docs.append((line_no, query_id, doc_id))
            if drop_unknown_qrels:
                continue
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            stats.qrels_duplicates += 1
        judged[doc_id] = score
    if unknown_docs:
        first = ", ".join(f"line {n} ({q} -> {d})" for n, q, d in unknown_docs[:3])
        logger.warning(
            "%s: %d judgments name documents missing from the corpus (%s%s); %s.",
            qrels_path,
            len(unknown_docs),
            first,
            ", ..." if len(unknown_docs) > 3 else "",
            "dropped" if drop_unknown_qrels else "kept, as BEIR does: they count in the ideal ranking",
        )
    if unknown_queries:
        logger.warning(
            "%s: %d judgments name %d queries missing from %s (e.g. %s); dropped.",
            qrels_path,
            stats.qrels_unknown_queries,
            len(unknown_queries),
            queries_path.name,
            min(unknown_queries),
        )
    if stats.qrels_duplicates:
        logger.warning(
            "%s: %d repeated (query, document) judgments; the last wins.", qrels_path, stats.qrels_duplicates
        )

    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    stats.documents = len(corpus)
    stats.queries_in_file = len(all_queries)
    stats.queries_judged = len(queries)
    stats.queries_without_judgments = len(all_queries) - len(queries)
    if not queries:
        raise DataError(f"no query of {queries_path.name} has a judgment in this split", qrels_path)
    if stats.queries_without_judgments:
        logger.info(
            "%d of %d queries have no judgment in split %r and are skipped (as BEIR does).",
            stats.queries_without_judgments,
            len(all_queries),
            split,
        )
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, name=root.name, split=split, stats=stats)


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; a line that is not a JSON object is a
    :class:`DataError` naming it."""
    # utf-8-sig: a byte-order mark (common from Windows editors) must not break line 1.
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path, line_no) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, line_no)
            yield line_no, obj


def _require_id(obj: dict[str, Any], path: Path, line_no: int) -> str:
    value = obj.get("_id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError("missing or non-string '_id'", path, line_no)
    value = str(value)
    if not value:
        raise DataError("empty '_id'", path, line_no)
    return value


def _require_text(obj: dict[str, Any], key: str, path: Path, line_no: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        what = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise DataError(f"'{key}' is {what}", path, line_no)
    return value


def _read_qrels(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """Rows of a BEIR qrels TSV (``query-id  corpus-id  score``), header optional."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        for row in reader:
            line_no = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 3:
                raise DataError(
                    f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}: {row!r}",
                    path,
                    line_no,
                )
            query_id, doc_id, raw_score = row[0].strip(), row[1].strip(), row[2].strip()
            score = _parse_grade(raw_score)
            if score is None:
                if line_no == 1:  # the header BEIR always writes (BEIR skips line 1 unread; we check it)
                    continue
                raise DataError(f"relevance score {raw_score!r} is not an integer", path, line_no)
            if not query_id or not doc_id:
                raise DataError("empty query-id or corpus-id", path, line_no)
            yield line_no, query_id, doc_id, score


def _parse_grade(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return None
    # "1.0" is an integer grade written by a float-happy exporter; "0.5" is not a grade pytrec_eval accepts.
    return int(value) if value.is_integer() else None
