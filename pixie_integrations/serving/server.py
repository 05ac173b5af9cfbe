"""The HTTP server: one :class:`~pixie_integrations.PixieScorer` behind the rerank API that vLLM, Jina and Cohere
clients speak.

Routes (JSON):

- ``POST /rerank`` and ``POST /v1/rerank``: ``{"query", "documents": [str | {"text": str}], "top_n", "instruction",
  "return_documents"}`` -> ``{"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage"}``,
  best first (ties keep input order).
- ``POST /score``: ``{"queries": str | [str], "documents": [str], "instruction", "raw"}`` -> ``{"id", "model",
  "scores", "usage"}`` in input order; one query against every document, or pairwise when ``queries`` is a list as
  long as ``documents``.
- ``GET /health`` (never needs the API key) and ``GET /v1/models`` (OpenAI shape, as vLLM serves it).

The scoring routes are plain ``def`` functions, so FastAPI runs them in its thread pool and the event loop keeps
accepting requests while the model works; the core scorer is thread-safe and shares one model across the threads.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from .. import __version__

if TYPE_CHECKING:
    from ..scorer import PixieScorer

__all__ = [
    "RerankDocument",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "ScoreRequest",
    "ScoreResponse",
    "Usage",
    "create_app",
    "serve",
    "serve_in_thread",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


# -- request and response bodies -------------------------------------------------------------------------------------
class RerankDocument(BaseModel):
    """A document as an object, the Jina/Cohere form; only ``text`` is scored."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr


class RerankRequest(BaseModel):
    """Body of ``POST /rerank`` and ``POST /v1/rerank`` (the Cohere/Jina/vLLM shape)."""

    # A misspelt option (``top_k``) must fail loudly rather than be ignored.
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(default=None, description="If given, must name the served model.")
    query: StrictStr
    documents: list[StrictStr | RerankDocument] = Field(description="Texts, or objects {'text': ...}; [] gives [].")
    top_n: Annotated[StrictInt, Field(gt=0)] | None = Field(default=None, description="Keep the best top_n; null: all.")
    instruction: StrictStr | None = Field(default=None, description="Task instruction; null: the server's.")
    return_documents: StrictBool = Field(default=False, description="Echo each kept document's text.")

    @field_validator("documents", mode="before")
    @classmethod
    def _documents_as_texts(cls, value: Any) -> Any:
        # One clear message per bad item instead of pydantic's error per union member.
        if not isinstance(value, list):
            return value
        texts = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                others = sorted(set(item) - {"text"})
                if others:
                    raise ValueError(
                        f"documents[{i}] has fields other than 'text' ({', '.join(others)}): only the text is scored, "
                        "so put everything that should count into 'text'"
                    )
                texts.append(item["text"])
            else:
                got = "an object without a string 'text'" if isinstance(item, dict) else _json_type(item)
                # ValueError, not TypeError: pydantic turns only ValueError into a validation error (a 422).
                raise ValueError(  # noqa: TRY004
                    f'documents[{i}] must be a string or an object {{"text": string}}, not {got}'
                )
        return texts


class ScoreRequest(BaseModel):
    """Body of ``POST /score``."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(default=None, description="If given, must name the served model.")
    queries: StrictStr | list[StrictStr] = Field(
        description="One query for every document, or one query per document (pairwise)."
    )
    documents: list[StrictStr]
    instruction: StrictStr | None = None
    raw: StrictBool = Field(default=False, description="Return logits instead of probabilities.")

    @field_validator("queries", mode="before")
    @classmethod
    def _one_message_for_queries(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(q, str) for q in value)):
            return value
        got = "a list with a non-string" if isinstance(value, list) else _json_type(value)
        raise ValueError(f"queries must be a string or a list of strings, not {got}")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class Usage(BaseModel):
    pairs: int
    """(query, document) pairs scored."""


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage


class ScoreResponse(BaseModel):
    id: str
    model: str
    scores: list[float]
    usage: Usage


# -- the app ---------------------------------------------------------------------------------------------------------
def create_app(scorer: PixieScorer, *, served_model_name: str | None = None, api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving ``scorer``.

    Args:
        scorer: The loaded scorer; every request shares it (and its one copy of the weights).
        served_model_name: The name reported in responses and ``/v1/models`` and accepted in a request's ``model``;
            default ``scorer.model_name``.
        api_key: If set, every route but ``/health`` needs ``Authorization: Bearer <api_key>`` (as vLLM's
            ``--api-key``).
    """
    name = served_model_name or scorer.model_name
    created = int(time.time())
    guarded = [Depends(_bearer_check(api_key))] if api_key else []

    app = FastAPI(
        title="PIXIE reranker",
        version=__version__,
        summary=f"Reranking with {name} (Cohere/Jina/vLLM rerank API).",
    )
    app.state.scorer = scorer
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]

    def rerank(body: RerankRequest) -> RerankResponse:
        _check_model(body.model, name)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        start = time.perf_counter()
        ranked = _scoring(scorer.rank, body.query, texts, top_n=body.top_n, instruction=body.instruction)
        logger.debug("rerank: %d documents, top_n=%s, %.1f ms", len(texts), body.top_n, _ms(start))
        results = [
            RerankResult(
                index=r.index,
                relevance_score=r.score,
                document=RerankDocument(text=r.document) if body.return_documents else None,
            )
            for r in ranked
        ]
        return RerankResponse(id=_new_id("rerank"), model=name, results=results, usage=Usage(pairs=len(texts)))

    def score(body: ScoreRequest) -> ScoreResponse:
        _check_model(body.model, name)
        queries, documents = body.queries, body.documents
        start = time.perf_counter()
        if isinstance(queries, str) or len(queries) == 1:
            query = queries if isinstance(queries, str) else queries[0]
            scores = _scoring(scorer.score, query, documents, instruction=body.instruction, raw=body.raw)
        elif len(queries) == len(documents):
            pairs = list(zip(queries, documents, strict=True))
            scores = _scoring(scorer.score_pairs, pairs, instruction=body.instruction, raw=body.raw)
        else:
            raise HTTPException(
                422,
                f"queries must be one string, a list of one, or a list as long as documents (pairwise); "
                f"got {len(queries)} queries for {len(documents)} documents",
            )
        logger.debug("score: %d pairs, %.1f ms", len(scores), _ms(start))
        return ScoreResponse(id=_new_id("score"), model=name, scores=scores, usage=Usage(pairs=len(scores)))

    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "pixie-integrations"}],
        }

    def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    # exclude_none: "document" appears only when return_documents asked for it.
    for path in ("/rerank", "/v1/rerank"):
        app.add_api_route(
            path,
            rerank,
            methods=["POST"],
            response_model=RerankResponse,
            response_model_exclude_none=True,
            dependencies=guarded,
            summary="Rerank documents for a query, best first",
        )
    app.add_api_route(
        "/score",
        score,
        methods=["POST"],
        response_model=ScoreResponse,
        dependencies=guarded,
        summary="Score documents against queries, in input order",
    )
    app.add_api_route("/v1/models", models, methods=["GET"], dependencies=guarded, summary="The served model")
    app.add_api_route("/health", health, methods=["GET"], summary="Liveness")
    return app


def serve(
    model: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    api_key: str | None = None,
    log_level: str = "info",
    **scorer_settings: Any,
) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted.

    Args:
        model: Hub id or local folder, as for :class:`~pixie_integrations.PixieScorer`.
        host: Interface to bind. The default serves this machine only; ``0.0.0.0`` serves the network (then set
            ``api_key`` or put the server behind something that authenticates).
        port: TCP port.
        served_model_name: Name reported to clients (default: ``model``).
        api_key: Require ``Authorization: Bearer <api_key>`` on every route but ``/health``.
        log_level: uvicorn's log level.
        **scorer_settings: Passed to ``PixieScorer`` (``device``, ``dtype``, ``max_length``, ``instruction``, ...).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError('serving needs uvicorn: pip install "pixie-integrations[serve]"') from exc
    from ..scorer import PixieScorer

    scorer = PixieScorer(model, **scorer_settings)
    # The first forward pass pays for lazy initialisation (and compilation with compile=True): not a client's request.
    scorer.score("warm-up", ["warm-up"])
    app = create_app(scorer, served_model_name=served_model_name, api_key=api_key)
    if api_key is None and not _is_loopback(host):
        logger.warning("Serving on %s without an API key: anyone who can reach the port can use the model.", host)
    logger.info("Serving %r (%s) on http://%s:%d", scorer.model_name, scorer.device, host, port)
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


# -- helpers ---------------------------------------------------------------------------------------------------------
def _scoring(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    # The scorer raises TypeError/ValueError only for bad input (e.g. max_length too small for the query): a 422.
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from exc


def _check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise HTTPException(404, f"model {requested!r} is not served here; this server serves {served!r}")


def _bearer_check(api_key: str) -> Callable[[Request], None]:
    expected = f"Bearer {api_key}".encode()

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):  # constant time: no key guessing by timing
            raise HTTPException(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
            )

    return check


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # "detail" is one readable sentence (as for every other error here); the structured errors follow.
    errors = exc.errors()
    return JSONResponse(
        status_code=422,
        content={"detail": _describe(errors), "errors": [_plain(e) for e in errors]},
    )


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON (near character {error.get('loc', ('', '?'))[-1]})")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg", "invalid"))
        parts.append(f"{where}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts) or "invalid request"


def _plain(error: Any) -> dict[str, Any]:
    # pydantic's ctx may hold the exception object itself, which JSON cannot carry.
    return {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def _new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
