"""What one request may ask of the server, and the guard that refuses an oversized body before reading it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["CPU_TOKEN_DEFAULTS", "GPU_TOKEN_DEFAULTS", "BodySizeLimit", "ServerLimits"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# Defaults of the token limits by device, for the real model (0.6B): a 2-core CPU scores about 3-4k tokens/s, one
# data-centre GPU a few hundred thousand. A request should finish well within ``request_timeout`` (120 s), and the
# engine should hold no more than about that timeout's worth of work.
# A 2-core CPU scores the real PIXIE at about 400 input tokens a second (bf16 defaults, AMD Zen 4, measured with
# `pixie-rerank bench --preset cpu`), and one forward pass cannot be interrupted: a request must fit well within
# the 120 s request timeout alone, and one input must not hold the worker for minutes (attention grows with its
# square). Raise them on bigger CPUs.
CPU_TOKEN_DEFAULTS = {"max_document_tokens": 8_192, "max_request_tokens": 32_768, "max_pending_tokens": 65_536}
"""``max_document_tokens`` (capped at the model's ``max_length``), ``max_request_tokens`` and ``max_pending_tokens``
when the model runs on a CPU (sized for 2 cores)."""
GPU_TOKEN_DEFAULTS = {"max_request_tokens": 1_048_576, "max_pending_tokens": 8_388_608}
"""``max_request_tokens`` and ``max_pending_tokens`` when the model runs on an accelerator (CUDA, MPS, ...)."""


@dataclass(frozen=True)
class ServerLimits:
    """Per-request limits of ``pixie-rerank serve``; each has a CLI flag of the same name (``--max-body-bytes``).

    Past a limit the request gets a clear 4xx (413 for sizes, 422 for the rest) and costs the server nothing more.
    A token limit left ``None`` is resolved when the app is built (:meth:`resolved`): by the model's ``max_length``
    and by its device (:data:`CPU_TOKEN_DEFAULTS`, :data:`GPU_TOKEN_DEFAULTS`).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body, checked from ``Content-Length`` before it is read (and counted while streaming)."""
    max_documents: int = 1000
    """Most documents (or pairs) in one request."""
    max_document_chars: int = 200_000
    """Longest document, in characters: a cheap guard that bounds tokenizing work (tokens are limited below)."""
    max_query_chars: int = 20_000
    """Longest query or instruction, in characters."""
    max_document_tokens: int | None = None
    """Most tokens of one pair's whole input (template, query, document) after truncation; None: the device's
    default, at most the model's limit."""
    max_request_tokens: int | None = None
    """Most tokens of all pairs of one request, after truncation; None: the device's default."""
    max_pending_tokens: int | None = None
    """Most tokens pending in the batching engine; past it new requests get 503; None: the device's default."""
    request_timeout: float = 120.0
    """Seconds a request may wait and run; past it its remaining pairs are dropped and it gets 504."""
    max_pending_pairs: int = 16384
    """Most pairs queued in the batching engine; past it new requests get 503 with ``Retry-After``."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's headers (or idle before the next); then it is closed."""
    body_timeout: float = 60.0
    """Seconds a request may take to send its body once its headers arrived; then 408 and the connection closes."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _RESOLVED_LATER:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{f.name} must be a positive number, got {value!r}")

    def resolved(self, *, device: str, max_length: int) -> ServerLimits:
        """These limits with every ``None`` filled in for a model on ``device`` whose inputs hold ``max_length``."""
        defaults = CPU_TOKEN_DEFAULTS if device.split(":")[0] == "cpu" else GPU_TOKEN_DEFAULTS
        filled = {name: defaults[name] for name in defaults if getattr(self, name) is None}
        if self.max_document_tokens is None:
            filled["max_document_tokens"] = min(defaults.get("max_document_tokens", max_length), max_length)
        return replace(self, **filled)


_RESOLVED_LATER = frozenset({"max_document_tokens", "max_request_tokens", "max_pending_tokens"})


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
