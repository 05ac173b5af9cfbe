"""``pixie-rerank serve``: the rerank API over HTTP (see docs/serving.md).

Registering the command imports nothing heavy: FastAPI, uvicorn and torch are imported when it runs, so
``pixie-rerank --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Any

from ..cli_args import add_device_dtype, add_long_document_flags, fail, long_documents_from
from .limits import CPU_TOKEN_DEFAULTS, GPU_TOKEN_DEFAULTS, ServerLimits

__all__ = ["register"]

_DEFAULT_MODEL = "telepix/PIXIE-Spell-Reranker-Preview-0.6B"

_EPILOG = """\
routes:
  POST /rerank, /v1/rerank, /v2/rerank  rerank documents for a query (Cohere v1/v2, Jina, vLLM shapes)
  POST /score, /v1/score                score pairs in input order (vLLM's text_1/text_2, or queries/documents)
  GET  /v1/models                       the served model names
  GET  /metrics                         Prometheus metrics (needs the key unless --metrics-without-key)
  GET  /health                          liveness (never needs the API key)
  GET  /ready                           readiness: 503 while the engine is full (no key unless --ready-requires-key)
  GET  /openapi.json, /docs, /redoc     the API schema and its pages

examples:
  pixie-rerank serve                                       # the PIXIE hub model on http://127.0.0.1:8000
  pixie-rerank serve --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cuda --port 8080
  PIXIE_API_KEY=secret pixie-rerank serve --host 0.0.0.0   # on the network: require a key

  curl -s localhost:8000/rerank -H 'content-type: application/json' \\
       -d '{"query": "satellite data", "documents": ["a", "b"], "top_n": 1}'

From Python: RemoteScorer("http://127.0.0.1:8000") from pixie_integrations.serving, which the LangChain and
LlamaIndex adapters take as scorer=.
"""


def register(subparsers: Any) -> None:
    """Add the ``serve`` command to ``pixie-rerank``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the reranker over HTTP (Cohere/Jina/vLLM rerank API, /score)",
        description=(
            "Load one reranker and serve the rerank APIs over HTTP, so that several processes or machines share one "
            "copy of the model. The flags are checked and the port is bound before the model loads."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("PIXIE_MODEL_PATH", _DEFAULT_MODEL),
        help=f"hub id or local folder (default: $PIXIE_MODEL_PATH or {_DEFAULT_MODEL})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000)")
    add_device_dtype(parser)
    parser.add_argument(
        "--max-length", type=_positive_int, default=None, help="most tokens of one input (default: the model's limit)"
    )
    parser.add_argument("--instruction", default=None, help="task instruction used when a request gives none")
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="name(s) accepted as a request's 'model' and listed by /v1/models, e.g. the name a client sends "
        "(default: the hub id, or the folder's base name)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health and /ready (default: $PIXIE_API_KEY, "
        "else none; an empty key is an error)",
    )
    parser.add_argument(
        "--ready-requires-key", action="store_true", help="/ready needs the API key too (default: it answers without)"
    )
    parser.add_argument(
        "--metrics-without-key",
        action="store_true",
        help="serve GET /metrics (Prometheus) without the API key, for a scraper that has none (default: it needs "
        "the key like every route but /health and /ready)",
    )
    add_long_document_flags(
        parser,
        default_help="the default for requests that ask for no strategy: truncate (cut the end; the default) or "
        "chunk (score chunks, keep the best). Cohere's max_chunks_per_doc / max_tokens_per_doc ask for chunks.",
    )
    _add_limits(parser.add_argument_group("limits (past one, a clear 4xx, or 503 when the engine is full)"))
    parser.set_defaults(func=_run)


def _add_limits(limits: Any) -> None:
    """One flag per :class:`ServerLimits` field, of the same name."""
    defaults = ServerLimits()
    limits.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=defaults.max_body_bytes,
        help="largest request body, refused with 413 before it is read (default: %(default)s)",
    )
    limits.add_argument(
        "--max-documents",
        type=_positive_int,
        default=defaults.max_documents,
        help="most documents or pairs per request (default: %(default)s)",
    )
    limits.add_argument(
        "--max-document-chars",
        type=_positive_int,
        default=defaults.max_document_chars,
        help="longest document in characters (default: %(default)s)",
    )
    limits.add_argument(
        "--max-query-chars",
        type=_positive_int,
        default=defaults.max_query_chars,
        help="longest query or instruction in characters (default: %(default)s)",
    )
    limits.add_argument(
        "--max-document-tokens",
        type=_positive_int,
        default=None,
        help="most tokens of one pair's whole input after truncation, else 413 (default: "
        f"{CPU_TOKEN_DEFAULTS['max_document_tokens']} on a CPU, at most the model's max length; that on a GPU)",
    )
    limits.add_argument(
        "--max-request-tokens",
        type=_positive_int,
        default=None,
        help=f"most tokens of all pairs of one request, else 413 (default: {CPU_TOKEN_DEFAULTS['max_request_tokens']} "
        f"on a CPU, {GPU_TOKEN_DEFAULTS['max_request_tokens']} on a GPU)",
    )
    limits.add_argument(
        "--max-pending-tokens",
        type=_positive_int,
        default=None,
        help=f"most tokens pending in the engine; past it, 503 with Retry-After (default: "
        f"{CPU_TOKEN_DEFAULTS['max_pending_tokens']} on a CPU, {GPU_TOKEN_DEFAULTS['max_pending_tokens']} on a GPU)",
    )
    limits.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=defaults.request_timeout,
        help="seconds a request may wait and run before it is dropped with 504 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-pending-pairs",
        type=_positive_int,
        default=defaults.max_pending_pairs,
        help="most pairs pending in the engine; past it, 503 with Retry-After (default: %(default)s)",
    )
    limits.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=defaults.header_timeout,
        help="seconds a connection may take to send a request's headers before it is closed (default: %(default)s)",
    )
    limits.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=defaults.body_timeout,
        help="seconds a request may take to send its body, else 408 and the connection closes (default: %(default)s)",
    )


def _run(args: argparse.Namespace) -> int:
    where = "--api-key"
    if args.api_key is None and "PIXIE_API_KEY" in os.environ:
        args.api_key, where = os.environ["PIXIE_API_KEY"], "PIXIE_API_KEY"
    if args.api_key is not None and not args.api_key.strip():
        return _fail(f"{where} is empty; give a real key, or leave it out (unset PIXIE_API_KEY) to serve without one")
    if args.served_model_name is not None and any(not name.strip() for name in args.served_model_name):
        return _fail(f"--served-model-name takes non-empty names, got {args.served_model_name!r}")
    try:
        from . import serve
        from .server import ServerStartError, bind_socket
    except ImportError as exc:
        return _fail(str(exc))
    from ..loading import ModelLoadError

    try:
        long_documents = long_documents_from(args)
    except ValueError as exc:
        return _fail(str(exc))
    settings: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "max_length": args.max_length}
    if args.instruction is not None:
        settings["instruction"] = args.instruction
    limits = ServerLimits(**{name: getattr(args, name) for name in _LIMIT_FLAGS})
    try:
        sock = bind_socket(args.host, args.port)  # before the model loads: a taken port fails at once
    except ServerStartError as exc:
        return _fail(str(exc))
    # uvicorn announces the address once the model is loaded.
    print(f"Loading {args.model} ...", file=sys.stderr)
    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            served_model_name=args.served_model_name,
            api_key=args.api_key,
            limits=limits,
            ready_requires_key=args.ready_requires_key,
            metrics_without_key=args.metrics_without_key,
            sock=sock,
            long_documents=long_documents,
            **settings,
        )
    except (ServerStartError, ModelLoadError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        sock.close()
    return 0


# Every field of ServerLimits is a flag of the same name.
_LIMIT_FLAGS = [f.name for f in fields(ServerLimits)]


def _fail(message: str) -> int:
    return fail(message)  # one line, exit 2, as every command


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
