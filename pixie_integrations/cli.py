"""``pixie-rerank``: the command line (demo, bench, eval, quantize, serve)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .cli_args import EXIT_INTERRUPTED, ArgumentParser, add_device_dtype, fail
from .install import install_hint

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .evaluation.cli import register as register_eval
    from .quantization.cli import register as register_quantize

    # Subparsers take the parser's class: every subcommand reports usage errors in one line.
    parser = ArgumentParser(
        prog="pixie-rerank", description="PIXIE-Spell-Reranker: demo, benchmark, evaluation and serving."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_demo(sub)
    try:
        from .benchmark import register as register_bench
    except ImportError:  # the benchmark lands with its own module
        pass
    else:
        register_bench(sub)
    register_eval(sub)
    register_quantize(sub)
    try:
        from .serving.cli import register as register_serve
    except ImportError as exc:  # without the serve extra the command still shows, and says what to install
        _register_missing(sub, "serve", "serve the reranker over HTTP", exc)
    else:
        register_serve(sub)
    return parser


def _register_missing(subparsers: Any, name: str, help_text: str, error: ImportError) -> None:
    def run(args: argparse.Namespace) -> int:
        return fail(f"{error}; {install_hint(name)}")

    # No option prefix: every argument (--model ..., --help) lands in `ignored`, so any call reaches `run`.
    parser = subparsers.add_parser(name, help=f"{help_text} (not installed)", add_help=False, prefix_chars="\0")
    parser.add_argument("ignored", nargs="*")
    parser.set_defaults(func=run)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import CARD_DOCUMENTS, CARD_QUERIES, CARD_SCORES, run_demo
    from .loading import ModelLoadError, NotARerankerError

    # The first line at once, before the load (a first run downloads 1.2 GB; the hub's bars show on stderr).
    print(f"model: {args.model}  dtype: {args.dtype}", flush=True)
    try:
        scores = run_demo(args.model, device=args.device, dtype=args.dtype)
    except NotARerankerError as exc:
        return fail(f"{exc} Give the folder of a reranker checkpoint (PIXIE, Qwen3-Reranker, a cross-encoder).")
    except ModelLoadError as exc:
        return fail(
            f"{exc} From the command line: pixie-rerank demo --model ./PIXIE-Spell-Reranker-Preview-0.6B, or set "
            "PIXIE_MODEL_PATH."
        )
    print(f"{'#':>2}  {'card':>8}  {'pixie':>8}  {'diff':>9}  query / document")
    worst = 0.0
    for i, (card, got) in enumerate(zip(CARD_SCORES, scores)):
        worst = max(worst, abs(card - got))
        print(f"{i:>2}  {card:8.5f}  {got:8.5f}  {got - card:+9.2e}  {CARD_QUERIES[i]} / {CARD_DOCUMENTS[i][:30]}…")
    print(f"largest difference from the model card: {worst:.2e}")
    return 0


def _register_demo(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="rerank the model card's Korean example and print each score beside the card's",
        description="Score the model card's example pairs and compare with the scores the card printed.",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("PIXIE_MODEL_PATH", "telepix/PIXIE-Spell-Reranker-Preview-0.6B"),
        help="hub id or local folder (default: $PIXIE_MODEL_PATH or the PIXIE hub id)",
    )
    add_device_dtype(
        parser, dtype_default="float32", dtype_help="float32 (the card's precision, default), bfloat16 or float16"
    )
    parser.set_defaults(func=_run_demo)


def configure_logging(verbose: bool) -> None:
    """The CLI's logging: warnings (``-v``: info) on stderr; download bars on, per-load weight bars off."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        # transformers' per-load "Loading weights" bars drown the command's own output. Its switch also turns off
        # huggingface_hub's download bars, which a first run needs (a 1.2 GB download with no sign of life):
        # turn those back on unless the user disabled them (HF_HUB_DISABLE_PROGRESS_BARS).
        import huggingface_hub.utils as hub_utils
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").upper() not in ("1", "ON", "YES", "TRUE"):
            hub_utils.enable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pixie-rerank``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: no traceback. Commands that keep partial work (eval's score cache) say so themselves.
        return fail("interrupted", code=EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
