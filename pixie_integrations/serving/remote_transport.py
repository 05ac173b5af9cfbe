"""HTTP for :class:`~pixie_integrations.serving.RemoteScorer`: pooled connections, retries with backoff, and the
translation of every failure into a :class:`~pixie_integrations.serving.RemoteScorerError` that names the URL.

One :class:`Transport` per scorer: a pooled ``httpx.Client`` for the blocking calls and one ``httpx.AsyncClient``
per event loop for the async ones, behind the same retry policy, error handling and answer check.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from .. import __version__
from ..tracing import trace_headers
from .remote_errors import RemoteScorerError

__all__ = ["MAX_RETRY_AFTER_S", "Transport"]

MAX_RETRY_AFTER_S = 60.0
"""A server's ``Retry-After`` is honoured up to this many seconds; past it the call fails rather than hang."""


class Transport:
    """Requests to one server, with retries; thread-safe.

    Args:
        base_url: The server's root (no trailing ``/``).
        timeout: Seconds to wait for connecting and for each answer; ``None`` waits forever.
        headers: Extra HTTP headers sent with every request.
        retries: Further tries after a 429, a 503 or a failed connection.
        backoff: Seconds before the first retry; each further one waits about twice as long (with jitter).
        logger: Where retries are announced.
        check: Called with the URL and every answer before it is decoded (sync and async alike); raise to refuse it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None,
        headers: Mapping[str, str],
        retries: int,
        backoff: float,
        logger: logging.Logger,
        check: Callable[[str, httpx.Response], None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.logger = logger
        self.check = check
        self.headers = {"User-Agent": f"pixie-integrations/{__version__}", **headers}
        self.client = httpx.Client(timeout=timeout, headers=self.headers)
        """The pooled client of the blocking calls."""
        self._lock = threading.Lock()
        self._async_clients: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}

    def request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        """One request with retries; the decoded JSON answer."""
        retrying = Retrying(**self._retry_policy())
        return retrying(self._send_once, method, path, payload)

    async def arequest(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        """:meth:`request` on asyncio."""
        retrying = AsyncRetrying(**self._retry_policy())
        return await retrying(self._asend_once, method, path, payload)

    def close(self) -> None:
        """Close the pooled connections (the async ones of loops that are not running)."""
        self.client.close()
        with self._lock:
            clients, self._async_clients = list(self._async_clients.values()), {}
        for loop, client in clients:
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())

    async def aclose(self) -> None:
        """Close the connections, the running loop's async ones from inside it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._async_clients.pop(id(loop), None)
        if entry is not None:
            await entry[1].aclose()
        self.close()

    # -- one try -----------------------------------------------------------------------------------------------------
    def _retry_policy(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.retries + 1),
            "wait": _WaitRetryAfter(self.backoff),
            "retry": retry_if_exception(lambda exc: isinstance(exc, RemoteScorerError) and exc.retryable),
            "before_sleep": self._log_retry,
            "reraise": True,
        }

    def _send_once(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url = self.base_url + path
        try:
            response = self.client.request(method, url, json=payload, headers=trace_headers())
        except httpx.HTTPError as exc:
            raise self._transport_error(url, exc) from exc
        return self._decode(url, response)

    async def _asend_once(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url = self.base_url + path
        try:
            response = await self._async_client().request(method, url, json=payload, headers=trace_headers())
        except httpx.HTTPError as exc:
            raise self._transport_error(url, exc) from exc
        return self._decode(url, response)

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient's pool belongs to the event loop it first ran on: one client per loop.
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._async_clients.get(id(loop))
            if entry is None or entry[0] is not loop:
                entry = (loop, httpx.AsyncClient(timeout=self.timeout, headers=self.headers))
                self._async_clients = {
                    key: value for key, value in self._async_clients.items() if not value[0].is_closed()
                }
                self._async_clients[id(loop)] = entry
            return entry[1]

    def _transport_error(self, url: str, exc: httpx.HTTPError) -> RemoteScorerError:
        if isinstance(exc, httpx.ConnectError):
            error = RemoteScorerError(
                f"The scoring server is not reachable at {url} ({exc}). Is it running, and is base_url right?", url=url
            )
            error.retryable = True
            return error
        if isinstance(exc, httpx.TimeoutException):
            error = RemoteScorerError(
                f"The scoring server at {url} did not answer within {self.timeout} s ({type(exc).__name__}).", url=url
            )
            error.retryable = isinstance(exc, httpx.ConnectTimeout)  # a slow answer is not retried: it would pile up
            return error
        error = RemoteScorerError(f"The request to {url} failed: {exc}", url=url)
        error.retryable = isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
        return error

    def _decode(self, url: str, response: httpx.Response) -> Any:
        if self.check is not None:
            self.check(url, response)
        if response.status_code >= 400:
            hint = ""
            if response.status_code == 404 and self.base_url.endswith("/v1"):
                hint = " (base_url should be the server's root, without /v1)"
            raise RemoteScorerError(
                f"{url} answered HTTP {response.status_code}: {_error_detail(response)}{hint}",
                url=url,
                status_code=response.status_code,
                retry_after=_retry_after(response),
            )
        try:
            return response.json()
        except ValueError as exc:
            raise RemoteScorerError(
                f"{url} answered with something that is not JSON", url=url, status_code=response.status_code
            ) from exc

    def _log_retry(self, retry_state: Any) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        self.logger.warning("%s; retrying in %.2f s (try %d).", exc, wait, retry_state.attempt_number + 1)


class _WaitRetryAfter:
    """tenacity wait: the server's ``Retry-After`` when it gave one (up to 60 s), else exponential with jitter."""

    def __init__(self, backoff: float) -> None:
        self.exponential = wait_exponential(multiplier=backoff, max=30.0) + wait_random(0, backoff)

    def __call__(self, retry_state: Any) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(after, MAX_RETRY_AFTER_S)
        return float(self.exponential(retry_state))


def _error_detail(response: httpx.Response) -> str:
    """The server's own words: {"detail"}, OpenAI/vLLM's {"error": {"message"}}, TEI's {"error": str}, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        for key in ("detail", "message"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
