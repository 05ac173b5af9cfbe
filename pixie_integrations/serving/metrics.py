"""``GET /metrics``: the server and its model's engine in Prometheus' text format (``prometheus-client``).

:func:`install_metrics` adds the route, a pure-ASGI middleware that counts and times every request by its route
template, and a listener on the model's :class:`~pixie_integrations.engine.ScoringEngine` for forward passes,
per-request queue and model time, truncation and admission refusals. Each app gets its own ``CollectorRegistry``,
so several apps in one process (tests, one app per model) never collide, and the engine's listener goes away with
the app (at its lifespan's shutdown, or when it is garbage-collected), so apps built on a shared engine do not pile
up listeners on it.

Every metric is named ``pixie_*`` (the list is in docs/serving.md, "Metrics").
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        Info,
        generate_latest,
    )
except ImportError as exc:  # an install of the serve extra from before it needed prometheus-client
    from ..install import install_hint

    raise ImportError(f"the server's /metrics needs prometheus-client: {install_hint('serve')}") from exc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from .. import __version__

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ..engine import ScoringEngine

__all__ = ["METRICS_PATH", "OTHER_ROUTE", "STATUS_REFUSALS", "ServerMetrics", "install_metrics"]

METRICS_PATH = "/metrics"
OTHER_ROUTE = "other"
"""The ``route`` label of a request that matched no route (a 404 path), so unknown paths add no label values."""
STATUS_REFUSALS = {401: "unauthorized", 413: "too_large", 415: "unsupported_media_type"}
"""Answers counted as refusals by their status alone (the middleware counts them; nobody needs to report them)."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PAIR_BUCKETS = tuple(float(2**i) for i in range(13))  # 1 .. 4096
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(6, 19))  # 64 .. 262144


class ServerMetrics:
    """The metrics of one app: its own registry, the engine listener, and :meth:`refused` for the server's own
    refusals. Made by :func:`install_metrics` (also at ``app.state.metrics``); every method is thread-safe."""

    def __init__(self, engine: ScoringEngine, *, served_model_name: str) -> None:
        self.registry = CollectorRegistry()
        """This app's registry: what ``/metrics`` exposes."""
        r = self.registry
        self.requests = Counter(
            "pixie_requests_total",
            "HTTP requests answered, by route template and status.",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "pixie_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_passes = Counter("pixie_forward_passes_total", "Forward passes the engine ran.", registry=r)
        self.pass_pairs = Histogram(
            "pixie_forward_pass_pairs", "Pairs in each forward pass.", buckets=_PAIR_BUCKETS, registry=r
        )
        self.pass_tokens = Histogram(
            "pixie_forward_pass_tokens", "Input tokens in each forward pass.", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.pass_seconds = Histogram(
            "pixie_forward_pass_duration_seconds", "Time each forward pass took.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.engine_requests = Counter(
            "pixie_engine_requests_total",
            "Scoring requests the engine finished, by outcome (ok, cancelled, timeout, error).",
            ["outcome"],
            registry=r,
        )
        self.queue_seconds = Histogram(
            "pixie_request_queue_seconds",
            "Time a scoring request waited from acceptance to its first forward pass.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "pixie_request_model_seconds",
            "Time from a scoring request's first forward pass to its end.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.truncated = Counter(
            "pixie_truncated_documents_total",
            "Documents longer than the length limit, whose ends were cut.",
            registry=r,
        )
        self.refusals = Counter(
            "pixie_refused_requests_total", "Requests refused before scoring, by reason.", ["reason"], registry=r
        )
        pending_pairs = Gauge("pixie_pending_pairs", "Pairs accepted and not yet scored or dropped.", registry=r)
        pending_tokens = Gauge("pixie_pending_tokens", "Input tokens of the pending pairs.", registry=r)
        pending_pairs.set_function(lambda: engine.pending_pairs)
        pending_tokens.set_function(lambda: engine.pending_tokens)
        Info("pixie_server", "The server's version and served model name.", registry=r).info(
            {"version": __version__, "served_model_name": served_model_name}
        )
        self._engine = engine
        self._listener = _Listener(self)
        engine.add_listener(self._listener)
        # When the app (and so this object) is collected without a shutdown, the engine forgets the listener too.
        self._finalizer = weakref.finalize(self, engine.remove_listener, self._listener)

    def refused(self, reason: str) -> None:
        """Count one request the server refused, by a short ``snake_case`` reason (e.g. ``"too_many_documents"``).

        401, 413 and 415 answers are counted by the middleware already (:data:`STATUS_REFUSALS`), and the engine
        reports its own admission refusals (``"pending_pairs"``, ``"pending_tokens"``): report neither again.
        """
        self.refusals.labels(reason=reason).inc()

    def scrape(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop listening to the engine (the app's shutdown does it); the registry stays readable."""
        self._finalizer()

    # -- the engine listener's calls (engine threads) --------------------------------------------------------------
    def _batch_done(self, pairs: int, tokens: int, seconds: float) -> None:
        self.forward_passes.inc()
        self.pass_pairs.observe(pairs)
        self.pass_tokens.observe(tokens)
        self.pass_seconds.observe(seconds)

    def _request_done(self, outcome: str, truncated: int, queued_s: float, model_s: float) -> None:
        self.engine_requests.labels(outcome=outcome).inc()
        self.queue_seconds.observe(queued_s)
        self.model_seconds.observe(model_s)
        if truncated:
            self.truncated.inc(truncated)


class _Listener:
    """The :class:`~pixie_integrations.engine.EngineListener` on the engine: holds its metrics weakly, so the
    engine never keeps an app alive; never raises into the engine."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = weakref.ref(metrics)

    def batch_done(self, *, pairs: int, tokens: int, seconds: float) -> None:
        metrics = self._metrics()
        if metrics is not None:
            metrics._batch_done(pairs, tokens, seconds)

    def request_done(
        self, *, outcome: str, pairs: int, tokens: int, truncated: int, queued_s: float, model_s: float
    ) -> None:
        metrics = self._metrics()
        if metrics is not None:
            metrics._request_done(outcome, truncated, queued_s, model_s)

    def refused(self, *, reason: str) -> None:
        metrics = self._metrics()
        if metrics is not None:
            metrics.refused(reason)


def install_metrics(
    app: FastAPI,
    engine: ScoringEngine,
    *,
    served_model_name: str,
    dependencies: Sequence[Any] = (),
) -> ServerMetrics:
    """Add ``GET /metrics``, the request-counting middleware and the engine listener to ``app``.

    Call it once, after the app's other middleware, so that the counting middleware is outermost and sees every
    answer (a 413 refused before routing included).

    Args:
        app: The server's app.
        engine: The model's engine, read at scrape time (pending pairs and tokens) and listened to.
        served_model_name: Reported by ``pixie_server_info``.
        dependencies: The route's FastAPI dependencies: the server's API-key check, or none to open ``/metrics``
            to scrapers without the key.

    Returns:
        The app's :class:`ServerMetrics` (also ``app.state.metrics``): call its :meth:`~ServerMetrics.refused`
        for refusals the server answers itself.
    """
    metrics = ServerMetrics(engine, served_model_name=served_model_name)
    app.state.metrics = metrics

    app.add_api_route(
        METRICS_PATH,
        _scrape,
        methods=["GET"],
        dependencies=list(dependencies),
        summary="Prometheus metrics",
        include_in_schema=False,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return metrics


async def _scrape(request: Request) -> Response:
    # Found through the request, not captured: FastAPI caches every endpoint callable process-wide, and a closure
    # over the metrics would keep them (and the engine's listener) alive after the app is gone.
    return Response(request.app.state.metrics.scrape(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Pure-ASGI middleware: counts each HTTP request by route template and status and times it; counts the
    refusals in :data:`STATUS_REFUSALS`; detaches the engine listener at the lifespan's shutdown."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server's error handler answers 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_seconds.labels(route=route).observe(time.perf_counter() - start)
            reason = STATUS_REFUSALS.get(status)
            if reason is not None:
                self.metrics.refused(reason)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.metrics.close()
            return message

        return lifespan_receive


def _route_template(scope: Scope) -> str:
    """The matched route's path template (never the raw path); :data:`OTHER_ROUTE` when no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Answered before routing (e.g. a 413 on Content-Length): match the routes here.
    router = scope.get("router") or getattr(scope.get("app"), "router", None)
    for candidate in getattr(router, "routes", ()):
        match, _ = candidate.matches(scope)
        if match is not Match.NONE and isinstance(getattr(candidate, "path", None), str):
            return candidate.path
    return OTHER_ROUTE
