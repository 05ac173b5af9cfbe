"""The HTTP server: one :class:`~pixie_integrations.PixieScorer` behind the rerank APIs that Cohere, Jina and vLLM
clients speak, on the model's batching engine.

Routes (JSON; shapes in :mod:`pixie_integrations.serving.schemas`):

- ``POST /rerank``, ``/v1/rerank``, ``/v2/rerank``: Cohere v1/v2, Jina and vLLM rerank requests -> results best
  first (ties keep input order), ``usage`` with token counts, Cohere's ``meta``.
- ``POST /score`` and ``/v1/score``: vLLM's ``text_1``/``text_2`` -> ``data: [{index, object, score}]``; both also
  take this server's own ``queries``/``documents`` -> ``scores`` (what ``RemoteScorer`` sends).
- ``GET /metrics``: Prometheus metrics (:mod:`pixie_integrations.serving.metrics`).
- ``GET /health``: liveness; ``GET /ready``: readiness (503 while the engine is full); neither needs the API key
  (``/ready`` does with ``ready_requires_key``). ``GET /v1/models``: the served names (OpenAI shape, as vLLM serves
  it); ``/docs``, ``/redoc``, ``/openapi.json``.

Scoring never runs on the event loop or in a thread per request: requests are tokenized in the engine's encoding
pool and await the model's :class:`~pixie_integrations.engine.ScoringEngine`, whose one worker batches the pairs of
all concurrent requests. So ``/health`` answers at once however busy the model is, a request whose client hung up
is dropped before its pairs run, and a full engine is a 503 with ``Retry-After`` instead of an unbounded backlog.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from pydantic import BaseModel

from .. import __version__
from ..chunking import LongDocuments
from ..engine import configure_engine
from ..install import install_hint
from .admission import bearer_check
from .errors import install_error_handlers
from .limits import BodySizeLimit, ServerLimits
from .metrics import install_metrics
from .middleware import ServerHeader, header_timeout_protocol
from .routes import Routes, json_response
from .schemas import PixieScoreRequest, RerankRequest, RerankResponse, VllmScoreRequest, VllmScoreResponse

if TYPE_CHECKING:
    import uvicorn

    from ..scorer import PixieScorer

__all__ = [
    "ServerLimits",
    "ServerStartError",
    "bind_socket",
    "check_served_names",
    "create_app",
    "default_served_name",
    "serve",
    "serve_in_thread",
]

logger = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server cannot start as configured (e.g. its port is taken); raised before the model loads."""


def default_served_name(model: str) -> str:
    """The name clients see by default: a hub id as it is, a local folder by its base name (never a full path)."""
    path = Path(model).expanduser()
    if path.exists() or path.is_absolute() or model.startswith((".", "~")):
        return path.resolve().name or model
    return model


def check_served_names(served_model_name: str | Sequence[str] | None, model: str) -> list[str]:
    """The served names (``None``: the default for ``model``); an empty name or list is a ``ValueError``."""
    if served_model_name is None:
        return [default_served_name(model)]
    names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(f"served_model_name must be a non-empty name or list of names, got {served_model_name!r}")
    return names


# -- the app ---------------------------------------------------------------------------------------------------------
def create_app(
    scorer: PixieScorer,
    *,
    served_model_name: str | Sequence[str] | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    ready_requires_key: bool = False,
    metrics_without_key: bool = False,
    long_documents: LongDocuments | None = None,
) -> FastAPI:
    """A FastAPI app serving ``scorer`` through its model's batching engine.

    Args:
        scorer: The loaded scorer; every request shares it (and its one copy of the weights).
        served_model_name: The name, or names, accepted in a request's ``model`` and listed by ``/v1/models``; the
            first is reported in responses to requests that name none. Default: the hub id, or a local folder's
            base name (a full path is never disclosed).
        api_key: If set, every route but ``/health`` and ``/ready`` needs ``Authorization: Bearer <api_key>`` (as
            vLLM's ``--api-key``; the scheme in any case), the schema and docs pages included. An empty key is an
            error, never "no auth".
        limits: Per-request limits (:class:`ServerLimits`); default ``ServerLimits()``, its ``None`` token limits
            resolved for the scorer's device and ``max_length`` (``app.state.limits`` holds the result). Its
            ``max_pending_pairs`` and ``max_pending_tokens`` bound the model's batching engine, which every app and
            ``ascore`` caller of that model shares.
        ready_requires_key: ``/ready`` needs the API key too (default: a load balancer probes it without one).
        metrics_without_key: Serve ``GET /metrics`` (Prometheus) without the API key, for a scraper that has none;
            by default it needs the key like every route but ``/health`` and ``/ready``.
        long_documents: The long-document settings of requests that ask for no strategy (default: truncate);
            Cohere's ``max_chunks_per_doc`` / ``max_tokens_per_doc`` and this server's own fields ask for chunks
            per request (docs/long_documents.md).
    """
    names = check_served_names(served_model_name, scorer.model_name)
    _check_api_key(api_key)
    limits = (limits if limits is not None else ServerLimits()).resolved(
        device=scorer.device.type, max_length=scorer.max_length
    )
    engine = configure_engine(scorer)  # the engine batches with the served scorer's settings
    engine.max_pending_pairs = limits.max_pending_pairs
    engine.max_pending_tokens = limits.max_pending_tokens

    app = FastAPI(
        title="PIXIE reranker",
        version=__version__,
        summary=f"Reranking with {names[0]} (Cohere, Jina and vLLM rerank APIs).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.scorer = scorer
    app.state.limits = limits
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(ServerHeader)  # added last: the outermost, so the 413 above carries the header too
    install_error_handlers(app)
    guarded = [Depends(bearer_check(api_key))] if api_key is not None else []
    routes = Routes(scorer, engine, names, limits, long_documents)
    _add_routes(app, routes, guarded, guarded if ready_requires_key else [])
    _add_schema_pages(app, guarded)
    install_metrics(app, engine, served_model_name=names[0], dependencies=[] if metrics_without_key else guarded)
    return app


def _add_routes(app: FastAPI, routes: Routes, guarded: list[Any], ready_guard: list[Any]) -> None:
    rerank = "Rerank documents for a query, best first"
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        _post(app, path, routes.rerank, RerankRequest, RerankResponse, guarded, rerank)
    score = "Score pairs in input order (vLLM's text_1/text_2, or queries/documents -> scores)"
    for path in ("/score", "/v1/score"):
        _post(app, path, routes.score, VllmScoreRequest, VllmScoreResponse, guarded, score)
    app.add_api_route("/v1/models", routes.models, methods=["GET"], dependencies=guarded, summary="Served names")
    app.add_api_route("/ready", routes.ready, methods=["GET"], dependencies=ready_guard, summary="Readiness")
    app.add_api_route("/health", routes.health, methods=["GET"], summary="Liveness (no API key needed)")


def _post(
    app: FastAPI,
    path: str,
    endpoint: Any,
    body: type[BaseModel],
    response: type[BaseModel],
    guarded: list[Any],
    summary: str,
) -> None:
    app.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        dependencies=guarded,
        summary=summary,
        response_model=None,
        responses={200: {"model": response}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}},
            }
        },
    )


def _add_schema_pages(app: FastAPI, guarded: list[Any]) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc``; bodies are parsed by hand, so their schemas are added here."""
    base = app.openapi
    bodies = [RerankRequest, VllmScoreRequest, PixieScoreRequest]

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            generated = base()
            components = generated.setdefault("components", {}).setdefault("schemas", {})
            for body in bodies:
                definition = body.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[body.__name__] = definition
            app.openapi_schema = generated
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]

    async def openapi() -> Any:
        return json_response(app.openapi())

    async def swagger() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    async def redoc() -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    for path, page in (("/openapi.json", openapi), ("/docs", swagger), ("/redoc", redoc)):
        app.add_api_route(path, page, methods=["GET"], dependencies=guarded, include_in_schema=False)


# -- running it --------------------------------------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (0: a free port), for uvicorn to serve on.

    Raises:
        ServerStartError: The port is taken, or the address is not this machine's (one sentence, with the fix).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerStartError(
            f"cannot serve on host {host!r}: {exc.strerror}; pass an address of this machine"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartError(
                f"port {port} on {host} is already in use (another server?): stop it or pick another --port"
            ) from None
        raise ServerStartError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def server_config(app: FastAPI, *, log_level: str = "info", lifespan: str = "auto") -> uvicorn.Config:
    """uvicorn's configuration for ``app``, with the header timeout of its ``app.state.limits``."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    limits: ServerLimits = getattr(app.state, "limits", None) or ServerLimits()
    protocol = header_timeout_protocol(AutoHTTPProtocol, limits.header_timeout)
    return uvicorn.Config(app, log_level=log_level, lifespan=lifespan, http=protocol)


def serve(
    model: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | Sequence[str] | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    ready_requires_key: bool = False,
    metrics_without_key: bool = False,
    log_level: str = "info",
    sock: socket.socket | None = None,
    long_documents: LongDocuments | None = None,
    **scorer_settings: Any,
) -> None:
    """Check the settings, bind the port, load ``model`` and serve it with uvicorn until interrupted.

    Args:
        model: Hub id or local folder, as for :class:`~pixie_integrations.PixieScorer`.
        host: Interface to bind. The default serves this machine only; ``0.0.0.0`` serves the network (then set
            ``api_key`` or put the server behind something that authenticates: a warning says so).
        port: TCP port.
        served_model_name: Name(s) reported to and accepted from clients (default: the hub id or folder name).
        api_key: Require ``Authorization: Bearer <api_key>`` on every route but ``/health`` and ``/ready``.
        limits: Per-request limits (:class:`ServerLimits`).
        ready_requires_key: ``/ready`` needs the API key too.
        metrics_without_key: Serve ``GET /metrics`` without the API key (see :func:`create_app`).
        log_level: uvicorn's log level.
        sock: A socket already bound (:func:`bind_socket`) to serve on; ``host`` and ``port`` are then only reported.
            Default: bind ``host:port`` here, before the model loads.
        long_documents: The server's default long-document settings (see :func:`create_app`).
        **scorer_settings: Passed to ``PixieScorer`` (``device``, ``dtype``, ``max_length``, ``instruction``, ...).

    Raises:
        ValueError: An empty ``api_key`` or served name (before anything loads).
        ServerStartError: The port cannot be bound (before the model loads).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(f"serving needs uvicorn: {install_hint('serve')}") from exc
    from ..scorer import PixieScorer

    _check_api_key(api_key)
    names = check_served_names(served_model_name, os.fspath(model))
    owned = sock is None
    if sock is None:
        sock = bind_socket(host, port)  # before the model loads: a taken port fails at once, not after a load
    try:
        logger.info("Loading %s ...", os.fspath(model))
        scorer = PixieScorer(model, **scorer_settings)
        # The first forward pass pays for lazy initialisation (and compilation with compile=True): not a client's.
        scorer.score("warm-up", ["warm-up"])
        app = create_app(
            scorer,
            served_model_name=names,
            api_key=api_key,
            limits=limits,
            ready_requires_key=ready_requires_key,
            metrics_without_key=metrics_without_key,
            long_documents=long_documents,
        )
        if api_key is None and not _is_loopback(host):
            logger.warning(
                "Serving on %s without an API key: anyone who can reach the port can use the model "
                "(set api_key, --api-key or PIXIE_API_KEY).",
                host,
            )
        logger.info("Serving %s (%s) on http://%s:%d", names, scorer.device, host, sock.getsockname()[1])
        uvicorn.Server(server_config(app, log_level=log_level)).run(sockets=[sock])
    finally:
        if owned:
            sock.close()


@contextmanager
def serve_in_thread(app: FastAPI, *, host: str = "127.0.0.1", start_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread on a free port of ``host``; yields its base URL.

    For tests, notebooks and examples: the server stops when the ``with`` block ends. The header timeout is that of
    the app's limits (``app.state.limits``), as under :func:`serve`.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(f"serving needs uvicorn: {install_hint('serve')}") from exc
    sock = bind_socket(host, 0)  # the OS picks a free port; uvicorn takes the bound socket, so no other process races
    server = uvicorn.Server(server_config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server did not start within {start_timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _check_api_key(api_key: str | None) -> None:
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: pass a real key, or api_key=None to serve without one")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
