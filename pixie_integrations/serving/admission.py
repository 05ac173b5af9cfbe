"""What a request must pass before it costs the model anything, cheapest check first.

1. Its content type (JSON only) and the API key, before the body is read.
2. Counts and characters (:func:`check_sizes`), and a guaranteed lower bound of its tokens from its characters
   (:func:`check_token_floor`): a request that is already too large is refused before it is tokenized.
3. The exact token counts once tokenized (:func:`check_prepared`), before anything is queued for the model.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request

from .errors import ApiError
from .limits import ServerLimits

if TYPE_CHECKING:
    from ..engine import PreparedRequest
    from ..scorer import PixieScorer

__all__ = [
    "TokenFloor",
    "bearer_check",
    "check_json_content_type",
    "check_prepared",
    "check_sizes",
    "check_token_floor",
    "token_floor",
]

TokenFloor = Callable[[str], int]
"""A guaranteed lower bound of a text's token count, from its characters alone."""


def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared JSON: a web page can post ``text/plain`` across origins without a CORS
    preflight, and such a body must never be scored."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        got = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise ApiError(415, f"this route takes a JSON body sent with Content-Type: application/json; got {got}")


def bearer_check(api_key: str) -> Callable[[Request], None]:
    """A FastAPI dependency that requires ``Authorization: Bearer <api_key>`` (the scheme in any case)."""
    expected = api_key.encode()

    def check(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # Constant time over the key: no guessing it by timing. The scheme is not secret.
        if not hmac.compare_digest(given.strip().encode(), expected) or scheme.lower() != "bearer":
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def check_sizes(pairs: list[tuple[str, str]], instruction: str | None, limits: ServerLimits) -> None:
    """422 past ``max_documents``, ``max_query_chars`` or ``max_document_chars`` (cheap guards on the work of
    tokenizing)."""
    if len(pairs) > limits.max_documents:
        raise ApiError(
            422,
            f"{len(pairs)} documents in one request; this server takes at most {limits.max_documents} "
            "(--max-documents): split the request",
            param="documents",
        )
    if instruction is not None and len(instruction) > limits.max_query_chars:
        raise ApiError(
            422,
            f"the instruction has {len(instruction)} characters; at most {limits.max_query_chars} (--max-query-chars)",
            param="instruction",
        )
    longest_query = max((len(q) for q in {q for q, _ in pairs}), default=0)
    if longest_query > limits.max_query_chars:
        raise ApiError(
            422,
            f"the query has {longest_query} characters; at most {limits.max_query_chars} (--max-query-chars)",
            param="query",
        )
    for i, (_, document) in enumerate(pairs):
        if len(document) > limits.max_document_chars:
            raise ApiError(
                422,
                f"documents[{i}] has {len(document)} characters; at most {limits.max_document_chars} "
                "(--max-document-chars): split or shorten it",
                param="documents",
            )


def token_floor(scorer: PixieScorer) -> TokenFloor:
    """The lower bound of token counts that :func:`check_token_floor` uses for ``scorer``'s tokenizer: its
    encoder's :meth:`~pixie_integrations.encoding.PairEncoder.min_tokens` (0, no bound, for tokenizers that cannot
    promise one)."""
    return scorer.encoder.min_tokens


def check_token_floor(
    pairs: list[tuple[str, str]],
    floor: TokenFloor,
    limits: ServerLimits,
    *,
    max_length: int,
    max_doc_tokens: int | None,
) -> None:
    """413 when the characters alone prove a pair or the request over its token limit (before tokenizing).

    A pair keeps at least ``min(floor(query) + min(floor(document), max_doc_tokens), max_length)`` tokens after
    truncation: the template only adds to it and truncation cuts only to ``max_length``.
    """
    assert limits.max_document_tokens is not None and limits.max_request_tokens is not None  # resolved by create_app
    doc_cap = max_doc_tokens if max_doc_tokens is not None else math.inf
    query_floor = {q: floor(q) for q in {q for q, _ in pairs}}
    total = 0
    for i, (query, document) in enumerate(pairs):
        at_least = int(min(query_floor[query] + min(floor(document), doc_cap), max_length))
        if at_least > limits.max_document_tokens:
            raise _too_many_document_tokens(i, at_least, limits.max_document_tokens, exact=False)
        total += at_least
    if total > limits.max_request_tokens:
        raise _too_many_request_tokens(total, limits.max_request_tokens, exact=False)


def check_prepared(prepared: PreparedRequest, limits: ServerLimits) -> None:
    """413 when the tokenized request (after truncation) is over ``max_document_tokens`` or ``max_request_tokens``."""
    assert limits.max_document_tokens is not None and limits.max_request_tokens is not None  # resolved by create_app
    pair_tokens = prepared.pair_tokens
    owners = prepared.chunks.owners if prepared.chunks is not None else None  # chunk inputs: name their document
    for i, tokens in enumerate(pair_tokens):
        if tokens > limits.max_document_tokens:
            document = owners[i] if owners is not None else i
            raise _too_many_document_tokens(document, tokens, limits.max_document_tokens, exact=True)
    total = sum(pair_tokens)
    if total > limits.max_request_tokens:
        raise _too_many_request_tokens(total, limits.max_request_tokens, exact=True)


def _too_many_document_tokens(index: int, tokens: int, limit: int, *, exact: bool) -> ApiError:
    count = f"{tokens}" if exact else f"at least {tokens}"
    return ApiError(
        413,
        f"documents[{index}] makes an input of {count} tokens with the query and template; this server takes at "
        f"most {limit} per document (max_document_tokens, --max-document-tokens): shorten it or set "
        "max_tokens_per_doc",
        param="documents",
    )


def _too_many_request_tokens(tokens: int, limit: int, *, exact: bool) -> ApiError:
    count = f"{tokens}" if exact else f"at least {tokens}"
    return ApiError(
        413,
        f"the request has {count} tokens with the template; this server takes at most {limit} per request "
        "(max_request_tokens, --max-request-tokens): split it into smaller requests",
        param="documents",
    )
