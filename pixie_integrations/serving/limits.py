"""What one request may ask of the server, and the guard that refuses an oversized body before reading it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["BodySizeLimit", "ServerLimits"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServerLimits:
    """Per-request limits of ``pixie-rerank serve``; each has a CLI flag of the same name (``--max-body-bytes``).

    Past a limit the request gets a clear 4xx (413 for the body, 422 for the rest) and costs the server nothing more.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body, checked from ``Content-Length`` before it is read (and counted while streaming)."""
    max_documents: int = 1000
    """Most documents (or pairs) in one request."""
    max_document_chars: int = 200_000
    """Longest document, in characters (tokenizing is bounded by it; the model still cuts at ``max_length``)."""
    max_query_chars: int = 20_000
    """Longest query or instruction, in characters."""
    request_timeout: float = 120.0
    """Seconds a request may wait and run; past it its remaining pairs are dropped and it gets 504."""
    max_pending_pairs: int = 16384
    """Most pairs queued in the batching engine; past it new requests get 503 with ``Retry-After``."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{f.name} must be a positive number, got {value!r}")


class BodySizeLimit:
    """ASGI middleware: a body over ``max_bytes`` is refused with 413 from its ``Content-Length`` alone, and a body
    without one (chunked) is cut off as soon as it passes the limit, so it is never buffered or parsed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await _refuse(send, self.max_bytes, length)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    raise _BodyTooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _refuse(send, self.max_bytes, None)
        except Exception:
            if refused and not started:  # a framework wrapped our signal in its own error
                await _refuse(send, self.max_bytes, None)
            else:
                raise


class _BodyTooLarge(Exception):
    pass


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, max_bytes: int, length: int | None) -> None:
    size = f"{length} bytes" if length is not None else f"more than {max_bytes} bytes"
    message = (
        f"the request body is {size}; this server accepts at most {max_bytes} bytes (--max-body-bytes). "
        "Send fewer or shorter documents per request."
    )
    body = json.dumps(
        {
            "error": {"message": message, "type": "request_too_large", "param": None, "code": 413},
            "detail": message,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
