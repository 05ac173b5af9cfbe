"""How the server answers what it will not do: :class:`ApiError` and the handlers that write every error body as
``{"error": {message, type, param, code}, "detail": message}`` (OpenAI/vLLM clients read the first, Jina the second).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__

__all__ = [
    "ERROR_TYPES",
    "SERVER_HEADER",
    "ApiError",
    "describe_validation_errors",
    "error_response",
    "install_error_handlers",
    "plain_message",
]

logger = logging.getLogger("pixie_integrations.serving.server")

SERVER_HEADER = ("X-Pixie-Server", f"pixie-integrations/{__version__}")
"""The header every response of the server carries (clients check it to know what they talk to)."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    499: "client_closed_request",
    503: "overloaded_error",
    504: "timeout_error",
}
"""The ``error.type`` of each status."""


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


def error_response(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body for ``status``."""
    error = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": status}
    return JSONResponse({"error": error, "detail": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError`, Starlette's HTTP errors (404, 405) and anything unexpected (500) in that shape."""
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, param=exc.param, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see GET /v1/models and POST /rerank"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("Internal error on %s %s", request.method, request.url.path, exc_info=exc)
    # Sent by Starlette's outermost middleware, past the one that adds the server header: add it here.
    return error_response(500, "internal server error; the server log has the details", headers=dict([SERVER_HEADER]))


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one sentence: ``where: what`` for each, duplicates dropped."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "is not a field of this request (check its spelling)"
        parts.append(f"{where}: {message}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def plain_message(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
