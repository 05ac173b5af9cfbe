"""``pixie-rerank``: the command line (demo, bench, eval)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .demo import register as register_demo
    from .evaluation.cli import register as register_eval

    parser = argparse.ArgumentParser(
        prog="pixie-rerank", description="PIXIE-Spell-Reranker: demo, benchmark and evaluation."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_demo(sub)
    try:
        from .benchmark import register as register_bench
    except ImportError:  # the benchmark lands with its own module
        pass
    else:
        register_bench(sub)
    register_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pixie-rerank``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # transformers' per-load "Loading weights" bars drown the command's own output.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
