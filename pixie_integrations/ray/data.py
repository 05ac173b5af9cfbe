"""Ray Data: rerank a ``Dataset`` of (query, candidates) rows, or score (query, document) rows, on an actor pool.

Each actor loads one :class:`~pixie_integrations.PixieScorer` when it starts and scores every batch it is handed,
so the scores are the in-process scorer's. Every input column is kept as it is; the scores (and ranks) are added.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..chunking import LongDocuments, resolve_long_documents
from ..ranking import rank_by_score
from ..validation import check_documents

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

__all__ = ["PixieBatchScorer", "rerank_dataset"]


class PixieBatchScorer:
    """A callable class for ``Dataset.map_batches``: adds PIXIE scores to each batch, keeping every column.

    Two row shapes:

    - **rerank** (``documents_column``): each row holds a query and a list of candidate texts; adds
      ``score_column`` (one score per candidate, in candidate order) and ``rank_column`` (each candidate's rank,
      1 = best; ties keep candidate order).
    - **pairs** (``document_column``): each row holds one query and one document; adds ``score_column`` (a float).

    Batches may be ``pyarrow.Table`` (what :func:`rerank_dataset` asks for: input columns pass through untouched),
    pandas DataFrames or dicts of numpy arrays (``map_batches``' default).

    Args:
        model: Hub id or local folder, as for :class:`~pixie_integrations.PixieScorer` (every node must reach it).
        query_column: The column holding the query text.
        documents_column: The column holding each row's candidate texts (rerank rows). Default ``"documents"``
            unless ``document_column`` is given.
        document_column: The column holding one document text per row (pair rows).
        score_column: Added column of scores. Default ``"scores"`` for rerank rows, ``"score"`` for pair rows.
        rank_column: Added column of ranks (rerank rows only); ``None`` adds none.
        instruction: Task instruction; ``None``: the scorer's (the card's default unless given in settings).
        raw: Logits instead of probabilities.
        long_documents: ``"truncate"`` (the default), ``"chunk"`` or a :class:`~pixie_integrations.LongDocuments`
            with the chunk settings: how documents longer than ``max_length`` are scored (docs/long_documents.md).
        **scorer_settings: Passed to ``PixieScorer`` (``device``, ``dtype``, ``max_length``, ...).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        query_column: str = "query",
        documents_column: str | None = None,
        document_column: str | None = None,
        score_column: str | None = None,
        rank_column: str | None = "ranks",
        instruction: str | None = None,
        raw: bool = False,
        long_documents: str | LongDocuments | None = None,
        **scorer_settings: Any,
    ) -> None:
        from ..scorer import PixieScorer

        self.long_documents = resolve_long_documents(long_documents)  # a bad value fails before the model loads

        if documents_column is not None and document_column is not None:
            raise ValueError("give documents_column (rows of candidates) or document_column (pairs), not both")
        self.pairs = document_column is not None
        self.query_column = query_column
        self.documents_column = document_column if self.pairs else (documents_column or "documents")
        self.score_column = score_column if score_column is not None else ("score" if self.pairs else "scores")
        self.rank_column = None if self.pairs else rank_column
        added = [c for c in (self.score_column, self.rank_column) if c is not None]
        if len(set(added)) != len(added) or {self.query_column, self.documents_column} & set(added):
            raise ValueError(f"the added columns {added} must differ from each other and from the input columns")
        self.instruction = instruction
        self.raw = raw
        self.scorer = PixieScorer(model, **scorer_settings)

    def __call__(self, batch: Any) -> Any:
        """Score one batch; returns it with the added columns."""
        queries = _column(batch, self.query_column)
        texts = _column(batch, self.documents_column)
        if self.pairs:
            pairs = [
                (_query(q, i, self.query_column), _document(d, i, self.documents_column))
                for i, (q, d) in enumerate(zip(queries, texts))
            ]
            scores = self.scorer.score_pairs(
                pairs, instruction=self.instruction, raw=self.raw, long_documents=self.long_documents
            )
            return _with_columns(batch, {self.score_column: scores}, {self.score_column: "float"})
        candidates = [_candidates(c, i, self.documents_column) for i, c in enumerate(texts)]
        flat = [
            (_query(q, i, self.query_column), d) for i, (q, docs) in enumerate(zip(queries, candidates)) for d in docs
        ]
        flat_scores = self.scorer.score_pairs(
            flat, instruction=self.instruction, raw=self.raw, long_documents=self.long_documents
        )
        per_row: list[list[float]] = []
        start = 0
        for docs in candidates:
            per_row.append(flat_scores[start : start + len(docs)])
            start += len(docs)
        added: dict[str, list[Any]] = {self.score_column: per_row}
        kinds = {self.score_column: "float_list"}
        if self.rank_column is not None:
            ranks = []
            for scores, docs in zip(per_row, candidates):
                rank_of = [0] * len(docs)
                for position, result in enumerate(rank_by_score(scores, docs, None), start=1):
                    rank_of[result.index] = position
                ranks.append(rank_of)
            added[self.rank_column] = ranks
            kinds[self.rank_column] = "int_list"
        return _with_columns(batch, added, kinds)


def rerank_dataset(
    ds: Dataset,
    model: str | os.PathLike[str],
    *,
    query_column: str = "query",
    documents_column: str | None = None,
    document_column: str | None = None,
    score_column: str | None = None,
    rank_column: str | None = "ranks",
    instruction: str | None = None,
    raw: bool = False,
    long_documents: str | LongDocuments | None = None,
    concurrency: int | tuple[int, int] = 1,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    rows_per_batch: int = 64,
    **scorer_settings: Any,
) -> Dataset:
    """``ds`` with scores (and ranks) added by :class:`PixieBatchScorer` on a pool of actors (lazy, as Ray Data is).

    Args:
        ds: Rows of (query, candidates) or, with ``document_column``, of (query, document).
        model, query_column, documents_column, document_column, score_column, rank_column, instruction, raw,
            long_documents: As for :class:`PixieBatchScorer`.
        concurrency: Actors, each holding one model: a fixed ``n`` or an autoscaling ``(min, max)``.
        num_gpus: GPUs per actor (``0.5`` puts two actors on one GPU); ``None``: none.
        num_cpus: CPUs per actor; ``None``: Ray's default (one).
        rows_per_batch: Rows per call (Ray Data's ``batch_size``; ``batch_size`` itself, among the settings, is
            the scorer's pairs per forward pass). A rerank row is a whole candidate list: keep it smaller than for
            pairs.
        **scorer_settings: Passed to ``PixieScorer`` on each actor (``device``, ``dtype``, ``max_length``, ...).
    """
    from ray.data import ActorPoolStrategy

    if isinstance(concurrency, tuple):
        compute = ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        compute = ActorPoolStrategy(size=concurrency)
    resources: dict[str, float] = {}
    if num_gpus is not None:
        resources["num_gpus"] = num_gpus
    if num_cpus is not None:
        resources["num_cpus"] = num_cpus
    return ds.map_batches(
        PixieBatchScorer,
        fn_constructor_args=(os.fspath(model),),
        fn_constructor_kwargs={
            "query_column": query_column,
            "documents_column": documents_column,
            "document_column": document_column,
            "score_column": score_column,
            "rank_column": rank_column,
            "instruction": instruction,
            "raw": raw,
            "long_documents": resolve_long_documents(long_documents),  # checked here, in the driver
            **scorer_settings,
        },
        batch_format="pyarrow",
        batch_size=rows_per_batch,
        compute=compute,
        **resources,
    )


# -- batches in any of Ray Data's formats ----------------------------------------------------------------------------
def _column(batch: Any, name: str) -> list[Any]:
    try:
        column = batch[name]
    except KeyError:
        columns = batch.column_names if hasattr(batch, "column_names") else list(batch.keys())
        raise KeyError(f"the dataset has no column {name!r} (columns: {', '.join(map(str, columns))})") from None
    if hasattr(column, "to_pylist"):  # pyarrow
        return column.to_pylist()
    return list(column)  # pandas Series or numpy array


def _query(value: Any, row: int, column: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"row {row} of the batch: {column!r} must be a str, not {type(value).__name__}")
    return value


def _document(value: Any, row: int, column: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"row {row} of the batch: {column!r} must be a str, not {type(value).__name__}")
    return value


def _candidates(value: Any, row: int, column: str) -> list[str]:
    if value is None or isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise TypeError(f"row {row} of the batch: {column!r} must be a list of str, not {type(value).__name__}")
    try:
        return check_documents(list(value))
    except TypeError as exc:
        raise TypeError(f"row {row} of the batch: {column!r}: {exc}") from None


def _with_columns(batch: Any, added: Mapping[str, Sequence[Any]], kinds: Mapping[str, str]) -> Any:
    """``batch`` plus the ``added`` columns, in the batch's own format; the input columns are not touched."""
    for name in added:
        existing = batch.column_names if hasattr(batch, "column_names") else list(batch.keys())
        if name in existing:
            raise ValueError(f"the dataset already has a column {name!r}; pick another score_column/rank_column")
    if hasattr(batch, "append_column"):  # pyarrow.Table
        table: pa.Table = batch
        import pyarrow as pa

        types = {"float": pa.float64(), "float_list": pa.list_(pa.float64()), "int_list": pa.list_(pa.int64())}
        for name, values in added.items():
            table = table.append_column(name, pa.array(list(values), type=types[kinds[name]]))
        return table
    if hasattr(batch, "assign"):  # pandas.DataFrame
        return batch.assign(**{name: list(values) for name, values in added.items()})
    import numpy as np

    out = dict(batch)  # a new dict: the caller's batch is left as it was
    for name, values in added.items():
        if kinds[name] == "float":
            out[name] = np.asarray(values, dtype=np.float64)
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = [np.asarray(v, dtype=np.float64 if kinds[name] == "float_list" else np.int64) for v in values]
            out[name] = column
    return out
