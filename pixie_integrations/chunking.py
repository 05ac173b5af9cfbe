"""Long documents scored in chunks: the settings, where the chunks are cut, and how their scores become one.

With ``long_documents="chunk"`` a document longer than a chunk is cut into windows of ``chunk_tokens`` tokens
(``chunk_overlap`` tokens shared by neighbours), each window is scored as a whole template input against the query,
and the document's score is the chunks' ``max``, ``first`` or ``mean``. Windows end only where the text decodes
cleanly (never inside a multi-byte character), preferably before a word, and with ``chunk_boundary="sentence"`` at
the last sentence end inside the window (``.``, ``!``, ``?``, their full-width forms and ``…`` — the punctuation
written Korean and English share — or a line break).

Torch-free: the planning works on token offsets, the aggregation on a tensor handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .ranking import ChunkSpan

__all__ = [
    "AGGREGATES",
    "BOUNDARIES",
    "MIN_CHUNK_TOKENS",
    "STRATEGIES",
    "ChunkPlan",
    "LongDocuments",
    "log_dropped_chunks",
    "plan_windows",
    "resolve_long_documents",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("truncate", "chunk")
"""What happens to a document longer than the room: its end is cut, or it is scored in chunks."""
AGGREGATES = ("max", "first", "mean")
"""How chunk scores become the document's: the best chunk, the first chunk, or the mean logit."""
BOUNDARIES = ("token", "sentence")
"""Where chunks end: at a clean token boundary, or at the last sentence end inside the window."""
MIN_CHUNK_TOKENS = 4
"""A UTF-8 character is at most 4 bytes, so a window of 4 byte-level tokens always holds a whole character."""

Strategy = Literal["truncate", "chunk"]
Aggregate = Literal["max", "first", "mean"]
Boundary = Literal["token", "sentence"]

_SENTENCE_ENDS = frozenset(".!?。！？…")
_CLOSERS = "\"'”’»)]）」』】"
# A window may end up to this share of its length (2 tokens at least) before its hard end to land before a word.
_WORD_SLACK = 8


@dataclass(frozen=True)
class LongDocuments:
    """How documents longer than the room left by ``max_length`` are scored (one value for every entry point).

    ``"truncate"`` (the default) cuts the document's end, the model card's behaviour; ``"chunk"`` scores windows of
    the document and aggregates them. The chunk settings are inert under ``"truncate"``.
    """

    strategy: Strategy = "truncate"
    """``"truncate"`` or ``"chunk"``."""
    chunk_tokens: int | None = None
    """Document tokens per chunk; ``None``: all that fit in ``max_length`` after the template and the query."""
    chunk_overlap: int = 0
    """Tokens each chunk repeats from the end of the one before (less than ``chunk_tokens``)."""
    max_chunks: int | None = None
    """Most chunks scored per document; later ones are dropped, counted and logged. ``None``: no limit."""
    aggregate: Aggregate = "max"
    """``"max"`` (the best chunk, Cohere's and Elasticsearch's rule), ``"first"``, or ``"mean"`` (of logits)."""
    chunk_boundary: Boundary = "token"
    """``"token"`` or ``"sentence"`` (end each chunk at the last sentence end inside its window)."""

    def __post_init__(self) -> None:
        _check_choice("long_documents", self.strategy, STRATEGIES)
        _check_choice("aggregate", self.aggregate, AGGREGATES)
        _check_choice("chunk_boundary", self.chunk_boundary, BOUNDARIES)
        if self.chunk_tokens is not None:
            _check_int("chunk_tokens", self.chunk_tokens, MIN_CHUNK_TOKENS)
        _check_int("chunk_overlap", self.chunk_overlap, 0)
        if self.max_chunks is not None:
            _check_int("max_chunks", self.max_chunks, 1)
        if self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap={self.chunk_overlap} must be less than chunk_tokens={self.chunk_tokens}")

    @property
    def chunked(self) -> bool:
        """Whether documents are scored in chunks."""
        return self.strategy == "chunk"

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (for serialization with a component)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LongDocuments:
        """The inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown long-document settings: {', '.join(unknown)}")
        return cls(**dict(data))


_SETTING_NAMES = ("chunk_tokens", "chunk_overlap", "max_chunks", "aggregate", "chunk_boundary")


def resolve_long_documents(
    long_documents: str | LongDocuments | None = None,
    *,
    default: LongDocuments | None = None,
    **settings: Any,
) -> LongDocuments:
    """One :class:`LongDocuments` from a call's arguments.

    Args:
        long_documents: ``"truncate"``, ``"chunk"``, a :class:`LongDocuments`, or ``None`` (``default``'s strategy).
        default: What unset arguments fall back to (a component's constructor settings); ``None``: the defaults.
        **settings: ``chunk_tokens``, ``chunk_overlap``, ``max_chunks``, ``aggregate``, ``chunk_boundary``; a
            ``None`` value is unset.

    Raises:
        ValueError: A bad value, an unknown setting, or a chunk setting given with ``"truncate"`` named in the
            same call (it would do nothing).
    """
    unknown = sorted(set(settings) - set(_SETTING_NAMES))
    if unknown:
        raise TypeError(f"unknown long-document argument(s): {', '.join(unknown)}")
    given = {k: v for k, v in settings.items() if v is not None}
    base = default if default is not None else LongDocuments()
    if isinstance(long_documents, LongDocuments):
        return replace(long_documents, **given) if given else long_documents
    if long_documents is None:
        return replace(base, **given) if given else base
    if not isinstance(long_documents, str):
        raise TypeError(f"long_documents must be 'truncate', 'chunk' or a LongDocuments, not {long_documents!r}")
    _check_choice("long_documents", long_documents, STRATEGIES)
    if long_documents == "truncate" and given:
        raise ValueError(
            f"{', '.join(sorted(given))} only apply with long_documents='chunk', not 'truncate'"
        )
    return replace(base, strategy=long_documents, **given)  # type: ignore[arg-type]


def plan_windows(
    text: str,
    offsets: Sequence[tuple[int, int]],
    *,
    window: int,
    overlap: int,
    boundary: str = "token",
) -> list[tuple[int, int]]:
    """Token windows ``[start, end)`` covering a document of ``len(offsets)`` tokens.

    Args:
        text: The document.
        offsets: Each token's character span in ``text`` (a fast tokenizer's offset mapping); the tokens of one
            multi-byte character share its span.
        window: Most tokens per window (at least :data:`MIN_CHUNK_TOKENS`).
        overlap: Tokens a window repeats from the one before (less than ``window``).
        boundary: ``"token"`` or ``"sentence"``.

    Every window but the last ends at a clean boundary (the next token starts a new character), before a word when
    one lies in the window's last eighth, and with ``"sentence"`` after the window's last sentence end.
    """
    n = len(offsets)
    if n <= window:
        return [(0, n)]
    clean = [True] * (n + 1)
    word = [True] * (n + 1)
    for k in range(1, n):
        clean[k] = offsets[k][0] >= offsets[k - 1][1]
        start = offsets[k][0]
        word[k] = clean[k] and (start >= len(text) or text[start].isspace() or text[start - 1 : start].isspace())
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        hard = start + window
        if hard >= n:
            windows.append((start, n))
            return windows
        floor = start + overlap + 1  # the next window must start past this one's start
        end = _pick_end(text, offsets, clean, word, floor, hard, window, boundary)
        windows.append((start, end))
        start = _pick_start(text, offsets, clean, end - overlap, start, end, boundary)


def _pick_end(
    text: str,
    offsets: Sequence[tuple[int, int]],
    clean: list[bool],
    word: list[bool],
    floor: int,
    hard: int,
    window: int,
    boundary: str,
) -> int:
    if boundary == "sentence":
        for k in range(hard, floor - 1, -1):
            if clean[k] and _sentence_ends_before(text, offsets, k):
                return k
    for k in range(hard, max(floor, hard - max(2, window // _WORD_SLACK)) - 1, -1):
        if word[k]:
            return k
    for k in range(hard, floor - 1, -1):
        if clean[k]:
            return k
    return hard  # unreachable for windows of MIN_CHUNK_TOKENS or more; a cut is still better than a loop


def _pick_start(
    text: str,
    offsets: Sequence[tuple[int, int]],
    clean: list[bool],
    target: int,
    previous: int,
    end: int,
    boundary: str,
) -> int:
    if target >= end:
        return end
    if boundary == "sentence":  # start the overlap at a sentence when one starts inside it
        for k in range(max(target, previous + 1), end):
            if clean[k] and _sentence_ends_before(text, offsets, k):
                return k
    for k in range(target, previous, -1):
        if clean[k]:
            return k
    for k in range(target + 1, end + 1):
        if clean[k]:
            return k
    return end


def _sentence_ends_before(text: str, offsets: Sequence[tuple[int, int]], k: int) -> bool:
    """Whether token ``k`` starts a sentence: the text before it ends a sentence, or a line break lies between."""
    start = offsets[k][0]
    if "\n" in text[offsets[k - 1][0] : start + 1]:
        return True
    if not (text[start - 1 : start].isspace() or text[start : start + 1].isspace()):
        return False  # "3.5", "e.g.x": no space after the mark
    i = start - 1  # back over spaces and closing quotes, by index: no copy of the text before
    while i >= 0 and (text[i].isspace() or text[i] in _CLOSERS):
        i -= 1
    return i >= 0 and text[i] in _SENTENCE_ENDS


@dataclass
class ChunkPlan:
    """Which chunk inputs belong to which document, and where each chunk lies in its document's text."""

    documents: int
    """Documents of the request."""
    how: str = "max"
    """How a document's chunk logits become its logit (:data:`AGGREGATES`)."""
    max_chunks: int | None = None
    """The ``max_chunks`` it was planned with (for the log line of dropped chunks)."""
    owners: list[int] = field(default_factory=list)
    """For each chunk input, in order, the index of its document (a document's chunks are contiguous)."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """For each chunk input, its character span in its document."""
    dropped: dict[int, int] = field(default_factory=dict)
    """Documents with chunks beyond ``max_chunks``: how many of their chunks were not scored."""

    def add(self, document: int, spans: Sequence[tuple[int, int]], dropped: int = 0) -> None:
        """Record the scored chunks of ``document`` (in order) and how many more were dropped."""
        self.owners += [document] * len(spans)
        self.spans += list(spans)
        if dropped:
            self.dropped[document] = dropped

    @property
    def chunks(self) -> int:
        """Chunk inputs in all."""
        return len(self.owners)

    def aggregate(self, logits: Any) -> tuple[Any, list[ChunkSpan]]:
        """Each document's logit from its chunks' (a 1-D float32 tensor in chunk order), and the chunk that decided
        it (for ``"mean"``, the best chunk).

        Returns the documents' logits (a tensor like ``logits``) and one :class:`~pixie_integrations.ChunkSpan`
        per document.
        """
        how = self.how
        _check_choice("aggregate", how, AGGREGATES)
        values = logits.new_empty(self.documents)
        winners: list[ChunkSpan] = []
        start = 0
        for doc in range(self.documents):
            end = start
            while end < len(self.owners) and self.owners[end] == doc:
                end += 1
            if end == start:
                raise ValueError(f"document {doc} has no chunk in the plan")
            part = logits[start:end]
            best = int(part.argmax()) if how != "first" else 0
            if how == "max":
                values[doc] = part[best]
            elif how == "first":
                values[doc] = part[0]
            else:
                values[doc] = part.mean()
            chunk_start, chunk_end = self.spans[start + best]
            winners.append(
                ChunkSpan(
                    index=best,
                    start=chunk_start,
                    end=chunk_end,
                    chunks=end - start,
                    chunks_dropped=self.dropped.get(doc, 0),
                )
            )
            start = end
        return values, winners


def log_dropped_chunks(plan: ChunkPlan) -> None:
    """Warn, once per call, how many documents had chunks beyond ``max_chunks`` (none is dropped silently)."""
    if plan.dropped:
        logger.warning(
            "%d of %d documents had more than max_chunks=%s chunks; their %d later chunks were not scored (raise "
            "max_chunks or chunk_tokens to read them).",
            len(plan.dropped),
            plan.documents,
            plan.max_chunks,
            sum(plan.dropped.values()),
        )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")
