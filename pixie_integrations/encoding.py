"""Turning (query, document) pairs into token ids: the template, and truncation that only ever cuts the document."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from .chunking import MIN_CHUNK_TOKENS, ChunkPlan, LongDocuments, plan_windows
from .loading import LoadedModel
from .template import DOCUMENT_HEAD, SUFFIX, format_query

__all__ = ["EncodedPair", "PairEncoder", "check_max_doc_tokens"]

# Beyond this a tokenizer's model_max_length is the "no limit" sentinel transformers uses, not a real limit.
_NO_LIMIT = 1_000_000
# Encoders whose position table reserves two slots for padding (RoBERTa lineage).
_POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "bge-m3"})
# Texts tokenized per hold of the shared tokenizer's lock.
_LOCK_SLICE = 64


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one input: ``prefix`` (shared by all documents of one query) then ``rest``."""

    prefix: tuple[int, ...]
    """Template families: text A (system prompt, instruction, query). Encoders: the whole pair."""
    rest: tuple[int, ...] = ()
    """Template families: ``<Document>: {document}`` (possibly cut) and the suffix. Encoders: empty."""
    token_type_ids: tuple[int, ...] | None = None
    """Encoders that use segment ids (BERT); ``None`` otherwise."""

    def __len__(self) -> int:
        return len(self.prefix) + len(self.rest)

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prefix + self.rest


def check_max_doc_tokens(max_doc_tokens: object) -> None:
    """``max_doc_tokens`` must be a positive int or None; anything else is a ``ValueError``."""
    if max_doc_tokens is not None and (
        isinstance(max_doc_tokens, bool) or not isinstance(max_doc_tokens, int) or max_doc_tokens <= 0
    ):
        raise ValueError(f"max_doc_tokens must be a positive int or None, got {max_doc_tokens!r}")


class PairEncoder:
    """Tokenizes pairs the way the model card's CrossEncoder does, without ever cutting the template."""

    def __init__(self, loaded: LoadedModel, *, max_length: int | None) -> None:
        self._loaded = loaded
        self._tokenizer = loaded.tokenizer
        limit = _model_limit(loaded)
        if max_length is None:
            max_length = limit
        elif isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        elif max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the model's limit of {limit} tokens")
        self.max_length = max_length
        self._chars_per_token = _longest_token_chars(self._tokenizer)
        if loaded.family.uses_template:
            self._suffix = tuple(self._ids([SUFFIX])[0])
            # "<Document>:" must survive truncation so the model still sees where the document starts.
            self._head_len = len(self._ids([DOCUMENT_HEAD.rstrip()])[0])
            self._n_special = 0
        else:
            self._n_special = self._tokenizer.num_special_tokens_to_add(pair=True)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        # In slices, each under the lock: one huge request never holds the tokenizer long against the others.
        out: list[list[int]] = []
        for start in range(0, len(texts), _LOCK_SLICE):
            with self._loaded.tokenizer_lock:
                out += self._tokenizer(texts[start : start + _LOCK_SLICE], add_special_tokens=False)["input_ids"]
        return out

    def _ids_with_offsets(self, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        ids: list[list[int]] = []
        offsets: list[list[tuple[int, int]]] = []
        for start in range(0, len(texts), _LOCK_SLICE):
            with self._loaded.tokenizer_lock:
                features = self._tokenizer(
                    texts[start : start + _LOCK_SLICE], add_special_tokens=False, return_offsets_mapping=True
                )
            ids += features["input_ids"]
            offsets += [[(int(a), int(b)) for a, b in spans] for spans in features["offset_mapping"]]
        return ids, offsets

    def min_tokens(self, text: str) -> int:
        """A guaranteed lower bound of the tokens ``text`` takes, from its characters alone (no tokenizing).

        Byte-level BPE (PIXIE's, Qwen's) covers at most as many characters per token as its longest vocabulary
        entry has bytes, so ``len(text) / longest`` tokens at least. Other tokenizers give 0 (no bound): their
        unknown-word token can swallow a word of any length.
        """
        if self._chars_per_token is None:
            return 0
        return -(-self._normalized_chars(text) // self._chars_per_token)

    def _normalized_chars(self, text: str) -> int:
        """Characters of ``text`` after the tokenizer's normalizer (NFC for Qwen, which can compose several code
        points into one), at C speed for NFC: this runs on the server's event loop for every document."""
        normalizer = self._tokenizer.backend_tokenizer.normalizer
        if normalizer is None or text.isascii():
            return len(text)
        if type(normalizer).__name__ == "NFC":
            return len(text) if unicodedata.is_normalized("NFC", text) else len(unicodedata.normalize("NFC", text))
        return len(normalizer.normalize_str(text))

    def encode(
        self,
        pairs: list[tuple[str, str]],
        instruction: str,
        *,
        max_doc_tokens: int | None = None,
        max_length: int | None = None,
    ) -> tuple[list[EncodedPair], int]:
        """Encode pairs; returns the encodings (in order) and how many documents were cut to fit ``max_length``.

        ``max_doc_tokens`` cuts each document to at most that many tokens first (the template is never cut); a
        document cut only by it is what the caller asked for and is not counted. ``max_length`` lowers the
        encoder's limit for this call only (documents cut by it are counted).
        """
        check_max_doc_tokens(max_doc_tokens)
        max_length = self._call_limit(max_length)
        if self._loaded.family.uses_template:
            return self._encode_template(pairs, instruction, max_doc_tokens, max_length)
        return self._encode_plain(pairs, max_doc_tokens, max_length)

    def encode_chunked(
        self,
        pairs: list[tuple[str, str]],
        instruction: str,
        settings: LongDocuments,
        *,
        max_doc_tokens: int | None = None,
        max_length: int | None = None,
    ) -> tuple[list[EncodedPair], ChunkPlan, int]:
        """Encode each document as chunks (``settings``: :class:`~pixie_integrations.chunking.LongDocuments`).

        Returns the chunk inputs (a document's chunks in a row, documents in order, each a whole template input
        sharing its query's prefix), the :class:`~pixie_integrations.chunking.ChunkPlan` that maps them back, and
        how many chunks were still cut to fit (encoder cross-encoders only, whose chunk texts are tokenized again
        as pairs; template families cut no chunk). A document that fits in one chunk is encoded exactly as
        :meth:`encode` encodes it. ``max_doc_tokens`` cuts each document before it is chunked.
        """
        check_max_doc_tokens(max_doc_tokens)
        max_length = self._call_limit(max_length)
        plan = ChunkPlan(len(pairs), how=settings.aggregate, max_chunks=settings.max_chunks)
        if self._loaded.family.uses_template:
            return self._chunk_template(pairs, instruction, settings, plan, max_doc_tokens, max_length)
        return self._chunk_plain(pairs, settings, plan, max_doc_tokens, max_length)

    def _call_limit(self, max_length: int | None) -> int:
        """One call's length limit: ``max_length`` if given (a positive int), at most the encoder's own."""
        if max_length is None:
            return self.max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        return min(max_length, self.max_length)

    def _windows(
        self,
        text: str,
        offsets: list[tuple[int, int]],
        room: int,
        settings: LongDocuments,
        *,
        max_length: int,
        whole: bool,
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
        """A document's token windows, their character spans and how many windows past ``max_chunks`` were dropped
        (``whole``: ``offsets`` cover the whole text, so the last span runs to its end)."""
        if room < MIN_CHUNK_TOKENS:
            raise ValueError(
                f"max_length={max_length} leaves {room} tokens for a document after the template and the "
                f"query; a chunk needs at least {MIN_CHUNK_TOKENS}."
            )
        window = min(settings.chunk_tokens or room, room)
        if settings.chunk_overlap >= window:
            raise ValueError(
                f"chunk_overlap={settings.chunk_overlap} must be less than the chunk's {window} tokens "
                f"(chunk_tokens, or the room max_length leaves)."
            )
        windows = plan_windows(
            text, offsets, window=window, overlap=settings.chunk_overlap, boundary=settings.chunk_boundary
        )
        dropped = 0
        if settings.max_chunks is not None and len(windows) > settings.max_chunks:
            dropped = len(windows) - settings.max_chunks
            windows = windows[: settings.max_chunks]
        n = len(offsets)
        spans = []
        for a, b in windows:
            start = offsets[a][0] if a > 0 else 0
            end = len(text) if b == n and whole else offsets[b - 1][1] if b > 0 else 0
            if a > 0:  # a later chunk's span starts at its first character, not the space before it
                while start < end and text[start].isspace():
                    start += 1
            spans.append((start, end))
        return windows, spans, dropped

    def _chunk_template(
        self,
        pairs: list[tuple[str, str]],
        instruction: str,
        settings: LongDocuments,
        plan: ChunkPlan,
        max_doc_tokens: int | None,
        max_length: int,
    ) -> tuple[list[EncodedPair], ChunkPlan, int]:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        prefixes = {
            q: tuple(ids) for q, ids in zip(queries, self._ids([format_query(q, instruction) for q in queries]))
        }
        docs, offsets = self._ids_with_offsets([DOCUMENT_HEAD + d for _, d in pairs])
        shift = len(DOCUMENT_HEAD)
        encoded: list[EncodedPair] = []
        for index, ((query, text), ids, spans) in enumerate(zip(pairs, docs, offsets)):
            prefix = prefixes[query]
            head, body = tuple(ids[: self._head_len]), ids[self._head_len :]
            body_offsets = [(max(a - shift, 0), max(b - shift, 0)) for a, b in spans[self._head_len :]]
            whole = max_doc_tokens is None or len(body) <= max_doc_tokens
            if not whole:
                body, body_offsets = body[:max_doc_tokens], body_offsets[:max_doc_tokens]
            room = max_length - len(prefix) - len(self._suffix) - self._head_len
            windows, chunk_spans, dropped = self._windows(
                text, body_offsets, room, settings, max_length=max_length, whole=whole
            )
            for a, b in windows:
                encoded.append(EncodedPair(prefix=prefix, rest=head + tuple(body[a:b]) + self._suffix))
            plan.add(index, chunk_spans, dropped)
        return encoded, plan, 0

    def _chunk_plain(
        self,
        pairs: list[tuple[str, str]],
        settings: LongDocuments,
        plan: ChunkPlan,
        max_doc_tokens: int | None,
        max_length: int,
    ) -> tuple[list[EncodedPair], ChunkPlan, int]:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        query_lengths = dict(zip(queries, map(len, self._ids(queries))))
        _, offsets = self._ids_with_offsets([d for _, d in pairs])
        chunk_pairs: list[tuple[str, str]] = []
        for index, ((query, text), spans) in enumerate(zip(pairs, offsets)):
            whole = max_doc_tokens is None or len(spans) <= max_doc_tokens
            if not whole:
                spans = spans[:max_doc_tokens]
            room = max_length - query_lengths[query] - self._n_special
            _, chunk_spans, dropped = self._windows(text, spans, room, settings, max_length=max_length, whole=whole)
            chunk_pairs += [(query, text[a:b]) for a, b in chunk_spans]
            plan.add(index, chunk_spans, dropped)
        encoded, truncated = self._encode_plain(chunk_pairs, None, max_length)
        return encoded, plan, truncated

    def _encode_template(
        self, pairs: list[tuple[str, str]], instruction: str, max_doc_tokens: int | None, max_length: int
    ) -> tuple[list[EncodedPair], int]:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        prefixes = {
            q: tuple(ids) for q, ids in zip(queries, self._ids([format_query(q, instruction) for q in queries]))
        }
        docs = self._ids([DOCUMENT_HEAD + d for _, d in pairs])
        encoded: list[EncodedPair] = []
        truncated = 0
        for (query, _), doc in zip(pairs, docs):
            prefix = prefixes[query]
            room = max_length - len(prefix) - len(self._suffix)
            if room < self._head_len:
                raise ValueError(
                    f"max_length={max_length} cannot hold the template and the query: the instruction and query "
                    f"take {len(prefix)} tokens, the suffix {len(self._suffix)} and the document marker "
                    f"{self._head_len}, so at least {len(prefix) + len(self._suffix) + self._head_len} are needed."
                )
            if max_doc_tokens is not None:
                # The marker's tokens are template, not document: the cap counts only what follows them.
                doc = doc[: self._head_len + max_doc_tokens]
            if len(doc) > room:
                doc = doc[:room]
                truncated += 1
            encoded.append(EncodedPair(prefix=prefix, rest=tuple(doc) + self._suffix))
        return encoded, truncated

    def _encode_plain(
        self, pairs: list[tuple[str, str]], max_doc_tokens: int | None, max_length: int
    ) -> tuple[list[EncodedPair], int]:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        query_lengths = dict(zip(queries, map(len, self._ids(queries))))
        doc_lengths = list(map(len, self._ids([d for _, d in pairs])))
        truncated = 0
        # Pairs grouped by the length limit that applies to them: "only_second" truncation to
        # query + special tokens + max_doc_tokens cuts exactly the document's tokens beyond the cap.
        groups: dict[int, list[int]] = {}
        for i, ((query, _), doc_len) in enumerate(zip(pairs, doc_lengths)):
            fixed = query_lengths[query] + self._n_special
            if fixed + 1 > max_length:
                raise ValueError(
                    f"max_length={max_length} cannot hold the query: it takes {query_lengths[query]} tokens and "
                    f"the special tokens {self._n_special}, so at least {fixed + 1} are needed."
                )
            if max_doc_tokens is not None:
                doc_len = min(doc_len, max_doc_tokens)
            truncated += fixed + doc_len > max_length
            limit = max_length if max_doc_tokens is None else min(max_length, fixed + max_doc_tokens)
            groups.setdefault(limit, []).append(i)
        encoded: list[EncodedPair | None] = [None] * len(pairs)
        for limit, members in groups.items():
            with self._loaded.tokenizer_lock:
                features = self._tokenizer(
                    [pairs[i][0] for i in members],
                    [pairs[i][1] for i in members],
                    truncation="only_second",
                    max_length=limit,
                )
            type_ids = features.get("token_type_ids")
            for j, ids in enumerate(features["input_ids"]):
                types = tuple(type_ids[j]) if type_ids is not None else None
                encoded[members[j]] = EncodedPair(prefix=tuple(ids), token_type_ids=types)
        return [pair for pair in encoded if pair is not None], truncated


def _model_limit(loaded: LoadedModel) -> int:
    config = loaded.model.config
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES else 0
        limits.append(positions - offset)
    if not loaded.family.uses_template:
        tokenizer_limit = getattr(loaded.tokenizer, "model_max_length", None)
        if tokenizer_limit and tokenizer_limit < _NO_LIMIT:
            limits.append(tokenizer_limit)
    return min(limits) if limits else 512


def _longest_token_chars(tokenizer: Any) -> int | None:
    """Most characters one token can stand for, for byte-level BPE (a vocabulary key's length is its bytes, at least
    its characters; added tokens included); ``None`` for other tokenizers, whose unknown-word token can swallow a
    word of any length."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    return max((len(token) for token in tokenizer.get_vocab()), default=0) or None
