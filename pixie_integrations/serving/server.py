"""The HTTP server: one :class:`~pixie_integrations.PixieScorer` behind the rerank APIs that Cohere, Jina and vLLM
clients speak, on the model's batching engine.

Routes (JSON; shapes in :mod:`pixie_integrations.serving.schemas`):

- ``POST /rerank``, ``/v1/rerank``, ``/v2/rerank``: Cohere v1/v2, Jina and vLLM rerank requests -> results best
  first (ties keep input order), ``usage`` with token counts, Cohere's ``meta``.
- ``POST /score`` and ``/v1/score``: vLLM's ``text_1``/``text_2`` -> ``data: [{index, object, score}]``; both also
  take this server's own ``queries``/``documents`` -> ``scores`` (what ``RemoteScorer`` sends).
- ``GET /health``: liveness, never needs the API key; ``GET /ready``: readiness (503 while the queue is full);
  ``GET /v1/models``: the served names (OpenAI shape, as vLLM serves it); ``/docs``, ``/redoc``, ``/openapi.json``.

Scoring never runs on the event loop or in a thread per request: requests await the model's
:class:`~pixie_integrations.engine.ScoringEngine`, whose one worker batches the pairs of all concurrent requests.
So ``/health`` answers at once however busy the model is, a request whose client hung up is dropped before its
pairs run, and a full queue is a 503 with ``Retry-After`` instead of an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic_core
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import EngineOverloadedError, ScoringResult, ScoringTimeoutError
from ..ranking import rank_by_score
from .limits import BodySizeLimit, ServerLimits
from .metrics import install_metrics
from .schemas import (
    PixieScoreRequest,
    PixieScoreResponse,
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    Usage,
    VllmScoreData,
    VllmScoreRequest,
    VllmScoreResponse,
)

if TYPE_CHECKING:
    from ..scorer import PixieScorer

__all__ = ["ServerLimits", "create_app", "default_served_name", "serve", "serve_in_thread"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T", bound=BaseModel)

# Bodies above this are validated in a worker thread, so parsing never holds up the event loop (and /health).
_PARSE_OFF_LOOP_BYTES = 256 * 1024
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    499: "client_closed_request",
    503: "overloaded_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error answered as ``{"error": {message, type, param, code}, "detail": message}``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


def default_served_name(model: str) -> str:
    """The name clients see by default: a hub id as it is, a local folder by its base name (never a full path)."""
    path = Path(model).expanduser()
    if path.exists() or path.is_absolute() or model.startswith((".", "~")):
        return path.resolve().name or model
    return model


# -- the app ---------------------------------------------------------------------------------------------------------
def create_app(
    scorer: PixieScorer,
    *,
    served_model_name: str | Sequence[str] | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    metrics_without_key: bool = False,
) -> FastAPI:
    """A FastAPI app serving ``scorer`` through its model's batching engine.

    Args:
        scorer: The loaded scorer; every request shares it (and its one copy of the weights).
        served_model_name: The name, or names, accepted in a request's ``model`` and listed by ``/v1/models``; the
            first is reported in responses to requests that name none. Default: the hub id, or a local folder's
            base name (a full path is never disclosed).
        api_key: If set, every route but ``/health`` needs ``Authorization: Bearer <api_key>`` (as vLLM's
            ``--api-key``), the schema and docs pages included. An empty key is an error, never "no auth".
        limits: Per-request limits (:class:`ServerLimits`); default ``ServerLimits()``. Its ``max_pending_pairs``
            bounds the model's batching engine, which every app and ``ascore`` caller of that model shares.
        metrics_without_key: Serve ``GET /metrics`` (Prometheus) without the API key, for a scraper that has none;
            by default it needs the key like every route but ``/health``.
    """
    names = _served_names(served_model_name, scorer.model_name)
    _check_api_key(api_key)
    limits = limits if limits is not None else ServerLimits()
    engine = scorer.engine
    engine.max_pending_pairs = limits.max_pending_pairs
    created = int(time.time())
    guarded = [Depends(_bearer_check(api_key))] if api_key is not None else []

    app = FastAPI(
        title="PIXIE reranker",
        version=__version__,
        summary=f"Reranking with {names[0]} (Cohere, Jina and vLLM rerank APIs).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.scorer = scorer
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)

    def model_of(requested: str | None) -> str:
        if requested is None:
            return names[0]
        if requested not in names:
            served = ", ".join(repr(n) for n in names)
            raise ApiError(404, f"model {requested!r} is not served here; this server serves {served}", param="model")
        return requested

    async def run(
        request: Request,
        pairs: list[tuple[str, str]],
        *,
        instruction: str | None,
        raw: bool,
        truncate_prompt_tokens: int | None = None,
        max_doc_tokens: int | None = None,
    ) -> ScoringResult:
        _check_sizes(pairs, instruction, limits)
        if truncate_prompt_tokens is not None and truncate_prompt_tokens <= 0 and truncate_prompt_tokens != -1:
            raise ApiError(
                422, "truncate_prompt_tokens must be positive or -1 (the model's limit)", param="truncate_prompt_tokens"
            )
        job = asyncio.ensure_future(  # the encoder caps a per-request max_length at the scorer's own
            engine.ascore(
                pairs,
                scorer=scorer,
                instruction=instruction,
                raw=raw,
                timeout=limits.request_timeout,
                max_length=None if truncate_prompt_tokens == -1 else truncate_prompt_tokens,
                max_doc_tokens=max_doc_tokens,
            )
        )
        return await _unless_disconnected(request, job, limits.request_timeout)

    async def rerank(request: Request) -> Any:
        body = await _parse(request, RerankRequest)
        model = model_of(body.model)
        try:
            texts = body.texts()
        except ValueError as exc:
            raise ApiError(422, str(exc), param="documents") from None
        raw = body.use_activation is False
        result = await run(
            request,
            [(body.query, t) for t in texts],
            instruction=body.instruction,
            raw=raw,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            max_doc_tokens=body.max_tokens_per_doc,
        )
        results = [
            RerankResult(
                index=hit.index,
                relevance_score=hit.score,
                document=_echo(body.documents[hit.index]) if body.return_documents else None,
            )
            for hit in rank_by_score(result.scores, texts, body.top_n or None)  # top_n 0: all
        ]
        warnings = _warnings(result, len(texts))
        if body.max_chunks_per_doc is not None:
            warnings.append("max_chunks_per_doc is ignored: long documents are truncated, not chunked")
        response = RerankResponse(
            id=body.request_id or _new_id("rerank"),
            model=model,
            results=results,
            usage=_usage(result, len(texts)),
            meta=RerankMeta(
                billed_units={"search_units": 1},
                tokens={"input_tokens": result.tokens, "output_tokens": 0},
                warnings=warnings or None,
            ),
        )
        return JSONResponse(response.model_dump(exclude_none=True))

    async def score(request: Request) -> Any:
        decoded = await _decode(request)
        if isinstance(decoded, dict) and ("text_1" in decoded or "text_2" in decoded):  # vLLM's shape
            return await vllm_score(request, _validate(decoded, VllmScoreRequest))
        body = _validate(decoded, PixieScoreRequest)
        model = model_of(body.model)
        queries, documents = body.queries, body.documents
        pairs = _pair_up(queries, documents)
        if pairs is None:
            raise ApiError(
                422,
                f"queries must be one string, a list of one, or a list as long as documents (pairwise); "
                f"got {len(queries)} queries for {len(documents)} documents",
                param="queries",
            )
        raw = body.raw or body.use_activation is False
        result = await run(
            request, pairs, instruction=body.instruction, raw=raw, truncate_prompt_tokens=body.truncate_prompt_tokens
        )
        response = PixieScoreResponse(
            id=body.request_id or _new_id("score"), model=model, scores=result.scores, usage=_usage(result, len(pairs))
        )
        return JSONResponse(response.model_dump())

    async def vllm_score(request: Request, body: VllmScoreRequest) -> Any:
        model = model_of(body.model)
        pairs = _pair_up(body.text_1, [body.text_2] if isinstance(body.text_2, str) else body.text_2)
        if pairs is None:  # vLLM's own rule and words
            raise ApiError(422, "Input lengths must be either 1:1, 1:N or N:N", param="text_1")
        result = await run(
            request,
            pairs,
            instruction=body.instruction,
            raw=body.use_activation is False,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
        )
        response = VllmScoreResponse(
            id=body.request_id or _new_id("score"),
            created=int(time.time()),
            model=model,
            data=[VllmScoreData(index=i, score=s) for i, s in enumerate(result.scores)],
            usage=_usage(result, len(pairs)),
        )
        return JSONResponse(response.model_dump())

    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "pixie-integrations", "root": names[0]}
                for name in names
            ],
        }

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def ready() -> Any:
        pending = engine.pending_pairs
        if pending >= engine.max_pending_pairs:
            return JSONResponse({"status": "overloaded", "pending_pairs": pending}, status_code=503)
        return {"status": "ready", "pending_pairs": pending}

    async def openapi() -> Any:
        return JSONResponse(app.openapi())

    async def swagger() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    async def redoc() -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        _post(app, path, rerank, RerankRequest, RerankResponse, guarded, "Rerank documents for a query, best first")
    for path in ("/score", "/v1/score"):
        _post(
            app,
            path,
            score,
            VllmScoreRequest,
            VllmScoreResponse,
            guarded,
            "Score pairs in input order (vLLM's text_1/text_2, or queries/documents -> scores)",
        )
    app.add_api_route("/v1/models", models, methods=["GET"], dependencies=guarded, summary="The served model names")
    app.add_api_route("/ready", ready, methods=["GET"], dependencies=guarded, summary="Readiness")
    app.add_api_route("/health", health, methods=["GET"], summary="Liveness (no API key needed)")
    for path, page in (("/openapi.json", openapi), ("/docs", swagger), ("/redoc", redoc)):
        app.add_api_route(path, page, methods=["GET"], dependencies=guarded, include_in_schema=False)
    _document_request_bodies(app, [RerankRequest, VllmScoreRequest, PixieScoreRequest])
    install_metrics(app, engine, served_model_name=names[0], dependencies=[] if metrics_without_key else guarded)
    return app


def serve(
    model: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | Sequence[str] | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    metrics_without_key: bool = False,
    log_level: str = "info",
    **scorer_settings: Any,
) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted.

    Args:
        model: Hub id or local folder, as for :class:`~pixie_integrations.PixieScorer`.
        host: Interface to bind. The default serves this machine only; ``0.0.0.0`` serves the network (then set
            ``api_key`` or put the server behind something that authenticates: a warning says so).
        port: TCP port.
        served_model_name: Name(s) reported to and accepted from clients (default: the hub id or folder name).
        api_key: Require ``Authorization: Bearer <api_key>`` on every route but ``/health``; empty is an error.
        limits: Per-request limits (:class:`ServerLimits`).
        metrics_without_key: Serve ``GET /metrics`` without the API key (see :func:`create_app`).
        log_level: uvicorn's log level.
        **scorer_settings: Passed to ``PixieScorer`` (``device``, ``dtype``, ``max_length``, ``instruction``, ...).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError('serving needs uvicorn: pip install "pixie-integrations[serve]"') from exc
    from ..scorer import PixieScorer

    _check_api_key(api_key)  # before the model loads
    scorer = PixieScorer(model, **scorer_settings)
    # The first forward pass pays for lazy initialisation (and compilation with compile=True): not a client's request.
    scorer.score("warm-up", ["warm-up"])
    app = create_app(
        scorer,
        served_model_name=served_model_name,
        api_key=api_key,
        limits=limits,
        metrics_without_key=metrics_without_key,
    )
    if api_key is None and not _is_loopback(host):
        logger.warning(
            "Serving on %s without an API key: anyone who can reach the port can use the model "
            "(set api_key, --api-key or PIXIE_API_KEY).",
            host,
        )
    logger.info(
        "Serving %s (%s) on http://%s:%d",
        _served_names(served_model_name, scorer.model_name),
        scorer.device,
        host,
        port,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def serve_in_thread(app: FastAPI, *, host: str = "127.0.0.1", start_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread on a free port of ``host``; yields its base URL.

    For tests, notebooks and examples: the server stops when the ``with`` block ends.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError('serving needs uvicorn: pip install "pixie-integrations[serve]"') from exc
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))  # the OS picks a free port; uvicorn takes the bound socket, so no other process can race
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
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


# -- request handling ------------------------------------------------------------------------------------------------
async def _decode(request: Request) -> Any:
    """The JSON body as Python objects (pydantic's parser: it refuses lone surrogates, which are not text)."""
    raw = await request.body()  # BodySizeLimit has refused anything too large before this reads it
    try:
        if len(raw) > _PARSE_OFF_LOOP_BYTES:
            return await run_in_threadpool(pydantic_core.from_json, raw)
        return pydantic_core.from_json(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


async def _parse(request: Request, model: type[_T]) -> _T:
    return _validate(await _decode(request), model)


def _validate(body: Any, model: type[_T]) -> _T:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0].get("loc", ()) if errors else ()
        raise ApiError(422, _describe(errors), param=".".join(str(p) for p in first) or None) from None


def _pair_up(queries: str | list[str], documents: list[str]) -> list[tuple[str, str]] | None:
    """One query against every document, or one query per document (pairwise); ``None`` if the counts disagree."""
    if isinstance(queries, str) or len(queries) == 1:
        query = queries if isinstance(queries, str) else queries[0]
        return [(query, d) for d in documents]
    if len(queries) == len(documents):
        return list(zip(queries, documents, strict=True))
    return None


def _check_api_key(api_key: str | None) -> None:
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: pass a real key, or api_key=None to serve without one")


def _check_sizes(pairs: list[tuple[str, str]], instruction: str | None, limits: ServerLimits) -> None:
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
    for i, (query, document) in enumerate(pairs):
        if len(query) > limits.max_query_chars:
            raise ApiError(
                422,
                f"the query has {len(query)} characters; at most {limits.max_query_chars} (--max-query-chars)",
                param="query",
            )
        if len(document) > limits.max_document_chars:
            raise ApiError(
                422,
                f"documents[{i}] has {len(document)} characters; at most {limits.max_document_chars} "
                "(--max-document-chars): split or shorten it",
                param="documents",
            )


async def _unless_disconnected(request: Request, job: asyncio.Future[ScoringResult], timeout: float) -> ScoringResult:
    """Await the engine's result; if the client hangs up first, cancel the job so its pairs never run."""
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({job, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
    if job not in done:
        job.cancel()
        logger.info("The client hung up; its request was dropped.")
        raise ApiError(499, "the client closed the connection before the response")
    try:
        return job.result()
    except EngineOverloadedError as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": str(round(exc.retry_after))}) from None
    except ScoringTimeoutError:
        raise ApiError(
            504, f"the request did not finish within {timeout:g} s (--request-timeout); send fewer documents"
        ) from None
    except ValueError as exc:  # bad input found while encoding (e.g. max_length too small for the query)
        raise ApiError(422, _plain_message(exc)) from None


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (uvicorn sends it when the client leaves).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _post(
    app: FastAPI,
    path: str,
    endpoint: Callable[[Request], Awaitable[Any]],
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


def _document_request_bodies(app: FastAPI, bodies: list[type[BaseModel]]) -> None:
    """Bodies are parsed by hand (off the event loop when large): add their schemas to the generated OpenAPI."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for body in bodies:
                definition = body.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[body.__name__] = definition
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- errors ----------------------------------------------------------------------------------------------------------
def _error_response(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    error = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": param, "code": status}
    return JSONResponse({"error": error, "detail": message}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _error_response(exc.status, exc.message, param=exc.param, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see GET /v1/models and POST /rerank"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return _error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("Internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(500, "internal server error; the server log has the details")


def _bearer_check(api_key: str) -> Callable[[Request], None]:
    expected = f"Bearer {api_key}".encode()

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):  # constant time: no key guessing by timing
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "is not a field of this request (check its spelling)"
        parts.append(f"{where}: {message}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def _plain_message(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- response pieces ---------------------------------------------------------------------------------------------------
def _usage(result: ScoringResult, pairs: int) -> Usage:
    return Usage(
        prompt_tokens=result.tokens, total_tokens=result.tokens, pairs=pairs, truncated_documents=result.truncated
    )


def _warnings(result: ScoringResult, pairs: int) -> list[str]:
    if not result.truncated:
        return []
    return [f"{result.truncated} of {pairs} documents were longer than the length limit; their ends were cut"]


def _echo(document: str | dict[str, Any]) -> dict[str, Any]:
    return {"text": document} if isinstance(document, str) else document


def _served_names(served_model_name: str | Sequence[str] | None, model: str) -> list[str]:
    if served_model_name is None:
        return [default_served_name(model)]
    names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(f"served_model_name must be a non-empty name or list of names, got {served_model_name!r}")
    return names


def _new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
