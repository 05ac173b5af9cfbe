"""``pixie-rerank serve``: the rerank API over HTTP (see docs/serving.md).

Registering the command imports nothing heavy: FastAPI, uvicorn and torch are imported when it runs, so
``pixie-rerank --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..cli_args import add_device_dtype
from .limits import ServerLimits

__all__ = ["register"]

_DEFAULT_MODEL = "telepix/PIXIE-Spell-Reranker-Preview-0.6B"

_EPILOG = """\
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
            "Load one reranker and serve POST /rerank, /v1/rerank and /score, GET /health and /v1/models, so that "
            "several processes or machines share one copy of the model."
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
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $PIXIE_API_KEY, else none; "
        "an empty key is an error)",
    )
    parser.add_argument(
        "--metrics-without-key",
        action="store_true",
        help="serve GET /metrics (Prometheus) without the API key, for a scraper that has none (default: it needs "
        "the key like every route but /health)",
    )
    limits = parser.add_argument_group("limits (per request; past one, a clear 4xx)")
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
        "--request-timeout",
        type=_positive_float,
        default=defaults.request_timeout,
        help="seconds a request may wait and run before it is dropped with 504 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-pending-pairs",
        type=_positive_int,
        default=defaults.max_pending_pairs,
        help="most pairs queued for the model; past it, 503 with Retry-After (default: %(default)s)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    where = "--api-key"
    if args.api_key is None and "PIXIE_API_KEY" in os.environ:
        args.api_key, where = os.environ["PIXIE_API_KEY"], "PIXIE_API_KEY"
    if args.api_key is not None and not args.api_key.strip():
        print(
            f"error: {where} is empty; give a real key, or leave it out (unset PIXIE_API_KEY) to serve without one",
            file=sys.stderr,
        )
        return 2
    try:
        from . import serve
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..loading import ModelLoadError

    settings: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "max_length": args.max_length}
    if args.instruction is not None:
        settings["instruction"] = args.instruction
    # uvicorn announces the address once the model is loaded and the port is bound.
    print(f"Loading {args.model} ...", file=sys.stderr)
    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            served_model_name=args.served_model_name,
            api_key=args.api_key,
            metrics_without_key=args.metrics_without_key,
            limits=ServerLimits(
                max_body_bytes=args.max_body_bytes,
                max_documents=args.max_documents,
                max_document_chars=args.max_document_chars,
                max_query_chars=args.max_query_chars,
                request_timeout=args.request_timeout,
                max_pending_pairs=args.max_pending_pairs,
            ),
            **settings,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


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
