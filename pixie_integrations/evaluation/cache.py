"""A SQLite store of reranker scores, so that re-running, resuming or adding a model recomputes nothing already done.

A score is keyed by the SHA-256 of (model key, instruction, query text, document text): the texts themselves, not
their ids, so a changed document or query is scored afresh and a renamed one is not. Each batch is committed as it is
scored (WAL journal), so a crash loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: typing.Self needs Python 3.11
    from typing_extensions import Self

__all__ = ["ScoreCache"]

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = "1"
# SQLite's default cap on bound parameters is 999 in old builds: stay under it.
_LOOKUP_CHUNK = 500


class ScoreCache:
    """Reranker scores on disk (or in memory with ``path=None``), with hit/miss counters.

    Args:
        path: The SQLite file (created with its folder if missing); ``None`` keeps the cache in memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if self.path is None else str(self.path))
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, model TEXT NOT NULL, score REAL NOT NULL)"
                " WITHOUT ROWID"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
        (version,) = self._db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if version != _SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: score cache schema {version}, expected {_SCHEMA_VERSION}; delete the file"
            )
        self.hits = 0
        """Lookups answered from the cache since this object was opened."""
        self.misses = 0
        """Lookups the cache could not answer (each one is a pair the model must score)."""
        self.writes = 0
        """Scores stored since this object was opened."""

    @staticmethod
    def key(model_key: str, instruction: str, query: str, document: str) -> bytes:
        """The cache key of one (model, instruction, query, document)."""
        payload = json.dumps([model_key, instruction, query, document], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).digest()

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, float]:
        """The stored scores among ``keys`` (missing keys are absent); counts hits and misses."""
        unique = list(dict.fromkeys(keys))
        found: dict[bytes, float] = {}
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, score FROM scores WHERE key IN ({marks})", chunk).fetchall())
        self.hits += len(found)
        self.misses += len(unique) - len(found)
        return found

    def put_many(self, model_key: str, items: Iterable[tuple[bytes, float]]) -> None:
        """Store scores and commit at once (a crash after this call keeps them)."""
        rows = [(key, model_key, float(score)) for key, score in items]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores (key, model, score) VALUES (?, ?, ?)", rows)
        self.writes += len(rows)

    def count(self, model_key: str | None = None) -> int:
        """Stored scores, of one model key or of all."""
        if model_key is None:
            (n,) = self._db.execute("SELECT COUNT(*) FROM scores").fetchone()
        else:
            (n,) = self._db.execute("SELECT COUNT(*) FROM scores WHERE model = ?", (model_key,)).fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ":memory:" if self.path is None else str(self.path)
        return f"ScoreCache({where!r}, hits={self.hits}, misses={self.misses}, writes={self.writes})"
