"""The first stage: a BM25 shortlist (bm25s) or a TREC run file from any retriever, cut to ``candidates`` per query.

BM25 tokenization (:func:`tokenize_ko_en`) works for Korean and English with nothing to download:

- text is NFKC-normalized and case-folded;
- runs of Hangul (and of kana / Han characters) become overlapping character bigrams, Lucene's ``CJKAnalyzer``
  scheme: Korean glues particles and endings to the stem (텔레픽스는 / 텔레픽스의 / 텔레픽스를), so whitespace words
  rarely match across inflections, while the stem's bigrams (텔레, 레픽, 픽스) do. Morphological analyzers (Mecab-ko,
  Kiwi, Nori) split better but need dictionaries; bigrams need nothing and are the usual dictionary-free baseline;
- other runs of letters and digits are words; a script change splits a token (``TelePIX의`` -> ``telepix``, ``의``);
- bm25s' English stopword list is removed; there is no stemming (it would need PyStemmer, and a 100-deep shortlist is
  about recall, which stemming barely moves).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import BeirDataset, DataError
from .metrics import trec_order

__all__ = [
    "Shortlist",
    "bm25_shortlist",
    "read_run",
    "read_trec_run",
    "run_shortlist",
    "tokenize_ko_en",
    "write_trec_run",
]

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]

_HANGUL = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff"
_KANA_HAN = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = _HANGUL + _KANA_HAN
# A CJK run, or a run of word characters that are not CJK (underscore splits, as punctuation does).
_TOKEN_RE = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+)")


def tokenize_ko_en(text: str) -> list[str]:
    """BM25 terms of a Korean/English text: lowercase words, and character bigrams inside Hangul/CJK runs.

    >>> tokenize_ko_en("TelePIX의 위성영상 AI")
    ['telepix', '의', '위성', '성영', '영상', 'ai']
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        cjk = match.group("cjk")
        if cjk is None:
            tokens.append(match.group("word"))
        elif len(cjk) == 1:
            tokens.append(cjk)
        else:
            tokens.extend(cjk[i : i + 2] for i in range(len(cjk) - 1))
    return tokens


@dataclass
class Shortlist:
    """The candidates each judged query hands to the rerankers, best first, with what building it dropped."""

    run: Run
    """query id -> document id -> first-stage score, in first-stage order; every judged query has an entry."""
    source: str
    """``"bm25"`` or ``"run:<file name>"``."""
    candidates: int
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        return sum(len(docs) for docs in self.run.values())


def bm25_shortlist(
    dataset: BeirDataset,
    *,
    candidates: int = 100,
    ignore_identical_ids: bool = True,
    k1: float = 1.5,
    b: float = 0.75,
    show_progress: bool = False,
) -> Shortlist:
    """Index the corpus with bm25s (Lucene BM25, ``k1=1.5``, ``b=0.75``) and keep each query's top ``candidates``.

    Documents sharing no term with the query (score 0) are not candidates, as in a search engine. With
    ``ignore_identical_ids`` a document whose id equals the query id is skipped and the next one taken, as BEIR's
    BM25 search does (it asks for ``top_k + 1`` hits).
    """
    bm25s = _import_bm25s()
    started = time.perf_counter()
    doc_ids = list(dataset.corpus)
    texts = [dataset.document_text(doc_id) for doc_id in doc_ids]
    # bm25s' own Tokenizer with our splitter: it builds the vocabulary and the id lists bm25s indexes efficiently.
    tokenizer = bm25s.tokenization.Tokenizer(lower=False, splitter=tokenize_ko_en, stopwords="en")
    corpus_tokens = tokenizer.tokenize(texts, return_as="tuple", show_progress=show_progress)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(corpus_tokens, show_progress=show_progress)
    query_ids = list(dataset.queries)
    query_tokens = tokenizer.tokenize(
        [dataset.queries[qid] for qid in query_ids], update_vocab=False, return_as="ids", show_progress=show_progress
    )
    depth = min(candidates + (1 if ignore_identical_ids else 0), len(doc_ids))
    indices, scores = retriever.retrieve(query_tokens, k=depth, show_progress=show_progress, n_threads=0)
    run: Run = {}
    dropped_identical = dropped_relevant = 0
    for row, qid in enumerate(query_ids):
        ranked: dict[str, float] = {}
        for index, score in zip(indices[row].tolist(), scores[row].tolist()):
            if score <= 0.0:
                continue
            doc_id = doc_ids[index]
            if ignore_identical_ids and doc_id == qid:
                dropped_identical += 1
                dropped_relevant += int(dataset.qrels[qid].get(doc_id, 0) > 0)
                continue
            ranked[doc_id] = float(score)
        run[qid] = dict(trec_order(ranked)[:candidates])
    stats = _finish_stats(run, dropped_identical, dropped_relevant)
    shortlist = Shortlist(
        run=run, source="bm25", candidates=candidates, seconds=time.perf_counter() - started, stats=stats
    )
    logger.info(
        "BM25 shortlist: %d queries, %d candidate pairs in %.1fs.", len(run), shortlist.pairs, shortlist.seconds
    )
    return shortlist


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a first-stage run: a ``.json`` file ``{qid: {docid: score}}`` (what BEIR-style evaluators, such as the
    card's ``--save_predictions``, write) or else a TREC run file (:func:`read_trec_run`)."""
    file = Path(path)
    if file.suffix.lower() != ".json":
        return read_trec_run(file)
    if not file.is_file():
        raise DataError("run file not found", file)
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", file, exc.lineno) from None
    if not isinstance(data, dict) or not data:
        raise DataError("expected a non-empty JSON object {query id: {document id: score}}", file)
    run: Run = {}
    for qid, docs in data.items():
        if not isinstance(docs, dict):
            raise DataError(f"query {qid!r}: expected an object {{document id: score}}", file)
        try:
            run[str(qid)] = {str(doc_id): float(score) for doc_id, score in docs.items()}
        except (TypeError, ValueError):
            raise DataError(f"query {qid!r}: a score is not a number", file) from None
    return run


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score [tag]``, whitespace-separated).

    The rank column is not used (trec_eval ranks by score too); a repeated (query, document) keeps its higher score.

    Raises:
        DataError: A missing file or a malformed line, with its line number.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError("run file not found", file)
    run: Run = {}
    repeated = 0
    with file.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) not in (5, 6):
                raise DataError(
                    f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}: {line.strip()[:80]!r}",
                    file,
                    line_no,
                )
            qid, _, doc_id, _, raw_score = parts[:5]
            try:
                score = float(raw_score)
            except ValueError:
                raise DataError(f"score {raw_score!r} is not a number", file, line_no) from None
            if math.isnan(score):  # NaN sorts nowhere: refuse it rather than rank at random
                raise DataError("score is NaN", file, line_no)
            docs = run.setdefault(qid, {})
            if doc_id in docs:
                repeated += 1
                score = max(score, docs[doc_id])
            docs[doc_id] = score
    if not run:
        raise DataError("the run file has no entries", file)
    if repeated:
        logger.warning("%s: %d repeated (query, document) lines; the higher score of each is kept.", file, repeated)
    return run


def run_shortlist(
    dataset: BeirDataset,
    run: Run | str | os.PathLike[str],
    *,
    candidates: int = 100,
    ignore_identical_ids: bool = True,
) -> Shortlist:
    """Cut a first-stage run (a dict, a TREC run file or a JSON run) to the top ``candidates`` of each judged query.

    Documents missing from the corpus cannot be reranked (there is no text): they are dropped, warned and counted.
    A judged query absent from the run gets no candidates and scores 0, as in BEIR.
    """
    started = time.perf_counter()
    source = "run"
    if not isinstance(run, dict):
        source = f"run:{Path(run).name}"
        run = read_run(run)
    unknown_docs = 0
    dropped_identical = dropped_relevant = 0
    shortlisted: Run = {}
    for qid in dataset.queries:
        ranked: dict[str, float] = {}
        for doc_id, score in run.get(qid, {}).items():
            if ignore_identical_ids and doc_id == qid:
                dropped_identical += 1
                dropped_relevant += int(dataset.qrels[qid].get(doc_id, 0) > 0)
                continue
            if doc_id not in dataset.corpus:
                unknown_docs += 1
                continue
            ranked[doc_id] = float(score)
        shortlisted[qid] = dict(trec_order(ranked)[:candidates])
    ignored_queries = sum(1 for qid in run if qid not in dataset.queries)
    if unknown_docs:
        logger.warning(
            "The run names %d documents missing from the corpus; they cannot be reranked and are dropped.", unknown_docs
        )
    if ignored_queries:
        logger.info("The run has %d queries that are not judged in this split; ignored.", ignored_queries)
    stats = _finish_stats(shortlisted, dropped_identical, dropped_relevant)
    stats.update(run_unknown_documents=unknown_docs, run_queries_ignored=ignored_queries)
    return Shortlist(
        run=shortlisted, source=source, candidates=candidates, seconds=time.perf_counter() - started, stats=stats
    )


def write_trec_run(path: str | os.PathLike[str], run: Run, tag: str) -> None:
    """Write ``qid Q0 docid rank score tag`` lines, ranked as trec_eval reads them (score desc, then docid desc).

    Scores are written in full (``repr``) so that reading the file back gives the same metrics; the file is replaced
    atomically so that a crash never leaves half a run.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"\s+", "_", tag) or "run"
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for qid, docs in run.items():
            for rank, (doc_id, score) in enumerate(trec_order(docs), start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")
    os.replace(tmp, target)


def _finish_stats(run: Run, dropped_identical: int, dropped_relevant: int) -> dict[str, int]:
    empty = sum(1 for docs in run.values() if not docs)
    if empty:
        logger.warning("%d of %d judged queries have no first-stage candidate; they score 0.", empty, len(run))
    if dropped_identical:
        logger.info(
            "Dropped %d candidates whose id equals the query id (BEIR's ignore_identical_ids).", dropped_identical
        )
    if dropped_relevant:
        # A judged-relevant document with the query's own id is no ArguAna-style copy of the query: the ids collide.
        logger.warning(
            "%d dropped candidates with the query's own id were judged relevant: your query and document ids seem "
            "to share a namespace. Pass ignore_identical_ids=False (--keep-identical-ids).",
            dropped_relevant,
        )
    return {
        "queries_without_candidates": empty,
        "identical_ids_dropped": dropped_identical,
        "identical_ids_dropped_relevant": dropped_relevant,
    }


def _import_bm25s() -> Any:
    try:
        import bm25s
        import bm25s.tokenization  # the Tokenizer lives in a submodule
    except ImportError as exc:
        from ..install import install_hint

        raise ImportError(f"The BM25 first stage needs bm25s: {install_hint('eval')}") from exc
    # bm25s sets its own logger to DEBUG on import, which prints index-building chatter under any app config;
    # hand the level back to the application's logging setup.
    bm25s_logger = logging.getLogger("bm25s")
    if bm25s_logger.level == logging.DEBUG:
        bm25s_logger.setLevel(logging.NOTSET)
    return bm25s
