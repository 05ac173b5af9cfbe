"""What the server does around every request: its identity header (ASGI middleware), and, under uvicorn, the
header read timeout that closes a connection which opens and sends nothing (a protocol class; uvicorn has no such
timeout of its own).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import SERVER_HEADER
from .limits import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ServerHeader", "header_timeout_protocol"]

_HEADER = (SERVER_HEADER[0].lower().encode(), SERVER_HEADER[1].encode())


class ServerHeader:
    """ASGI middleware: every response carries ``X-Pixie-Server: pixie-integrations/<version>``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), _HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)


def header_timeout_protocol(base: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol ``base`` (``uvicorn.protocols.http.auto.AutoHTTPProtocol``) with a header timeout.

    A connection gets ``seconds`` to deliver a request's headers, from when it opens and again after each response;
    one that has not by then (a half-open or slow-loris connection) is closed. A request whose headers arrived is
    not affected: its body has the app's own ``body_timeout``.
    """

    class HeaderTimeoutProtocol(base):  # type: ignore[valid-type, misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _header_timeout(self) -> None:
            self._header_timer = None
            cycle = getattr(self, "cycle", None)
            in_request = cycle is not None and not cycle.response_complete
            if not in_request and not self.transport.is_closing():
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = HeaderTimeoutProtocol.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol
