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
        "--served-model-name", default=None, help="name reported to clients and accepted as 'model' (default: --model)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("PIXIE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $PIXIE_API_KEY, else none)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
