"""``pixie-rerank quantize``: int8 calibrated and checked on the user's own data; written only when the gate holds."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ..cli_args import EXIT_INTERRUPTED, fail, positive_int
from ..install import install_hint

__all__ = ["EXIT_GATE_FAILED", "register"]

logger = logging.getLogger(__name__)

EXIT_GATE_FAILED = 1
"""The int8 model failed the quality gate (nothing written); user mistakes exit 2."""

_DEFAULT_MODEL = "telepix/PIXIE-Spell-Reranker-Preview-0.6B"

_EPILOG = """\
data: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv; candidates from BM25) or a JSONL file with
one query per line: {"query": "...", "documents": ["...", ...], "relevance": [2, 0, ...]} ("relevance" optional;
with it, NDCG@10 is part of the gate).

The gate: held-out queries (not used for calibration) are scored by the unquantized model (float32) and the int8
one. The model is written only if NDCG@10 falls by at most --max-ndcg-drop (when there are judgments) and the mean
Kendall tau per query is at least --min-kendall-tau; otherwise the command exits 1 naming the figure that failed.
The report is saved in the folder (pixie_quantization.json) and logged whenever it is loaded.

examples:
  pixie-rerank quantize --model ./PIXIE-Spell-Reranker-Preview-0.6B --data ./my-domain --output ./pixie-int8
  pixie-rerank quantize --model ./pixie --data pairs.jsonl --output ./pixie-int8 --check-queries 100
"""


def register(subparsers: Any) -> None:
    """Add the ``quantize`` command to ``pixie-rerank``."""
    parser = subparsers.add_parser(
        "quantize",
        help="int8 for CPUs, calibrated and quality-checked on your own data",
        description=(
            "Quantize a reranker to int8 weights and activations (SmoothQuant, sensitive layers kept in float), "
            "check it against the unquantized model on held-out queries of your data, and write it only if it "
            "passes."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("PIXIE_MODEL_PATH", _DEFAULT_MODEL),
        help=f"hub id or local folder (default: $PIXIE_MODEL_PATH or {_DEFAULT_MODEL})",
    )
    parser.add_argument("--data", required=True, metavar="PATH", help="BEIR folder or JSONL file (see below)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write the int8 model to (new)")
    parser.add_argument("--split", default="test", help="qrels split of a BEIR folder (default: test)")
    group = parser.add_argument_group("data splits")
    group.add_argument("--calibration-queries", type=positive_int, default=16, metavar="N", help="default: 16")
    group.add_argument(
        "--calibration-documents",
        type=positive_int,
        default=8,
        metavar="N",
        help="candidates used per calibration query (default: 8)",
    )
    group.add_argument("--check-queries", type=positive_int, default=32, metavar="N", help="held out (default: 32)")
    group.add_argument("--candidates", type=positive_int, default=20, metavar="N", help="per query (default: 20)")
    group.add_argument("--seed", type=int, default=0, help="shuffle before splitting the queries (default: 0)")
    gate = parser.add_argument_group("quality gate")
    gate.add_argument("--max-ndcg-drop", type=float, default=0.005, metavar="X", help="absolute (default: 0.005)")
    gate.add_argument("--min-kendall-tau", type=float, default=0.95, metavar="X", help="mean (default: 0.95)")
    gate.add_argument("--force", action="store_true", help="write the model even if the gate fails (recorded)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument(
        "--smooth-alpha",
        type=float,
        default=0.8,
        metavar="A",
        help="SmoothQuant migration strength in [0, 1] (default: 0.8)",
    )
    recipe.add_argument(
        "--keep-layers",
        default="auto",
        metavar="LIST",
        help='decoder layers kept in float: "auto" (the sensitivity pass decides, default), "none", or "0,27"',
    )
    parser.add_argument("--max-length", type=positive_int, default=None, help="tokens per pair (default: the model's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _keep_layers(text: str) -> tuple[str, ...] | None:
    if text == "auto":
        return None
    if text == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _run(args: argparse.Namespace) -> int:
    try:
        from ..evaluation.data import DataError
        from ..loading import ModelLoadError
        from .gate import GateThresholds
        from .quantizer import GateFailedError, quantize
        from .recipe import QuantizationRecipe
    except ImportError as exc:
        return fail(f"{exc}; {install_hint('eval')}")
    if not 0.0 <= args.smooth_alpha <= 1.0:
        return fail(f"--smooth-alpha must be between 0 and 1, not {args.smooth_alpha}")
    try:
        result = quantize(
            args.model,
            args.data,
            args.output,
            thresholds=GateThresholds(max_ndcg_drop=args.max_ndcg_drop, min_kendall_tau=args.min_kendall_tau),
            recipe=QuantizationRecipe(smooth_alpha=args.smooth_alpha),
            keep_layers=_keep_layers(args.keep_layers),
            calibration_queries=args.calibration_queries,
            calibration_documents=args.calibration_documents,
            check_queries=args.check_queries,
            candidates=args.candidates,
            split=args.split,
            seed=args.seed,
            max_length=args.max_length,
            force=args.force,
            show_progress=not args.no_progress,
        )
    except GateFailedError as exc:
        for line in exc.report.lines():
            print(line)
        return fail(f"not written: {'; '.join(exc.report.failed)} (--force writes it anyway)", code=EXIT_GATE_FAILED)
    except (DataError, ModelLoadError, FileExistsError, ImportError, ValueError) as exc:
        logger.info("quantize failed", exc_info=True)
        return fail(exc)
    except KeyboardInterrupt:
        return fail("interrupted; nothing written", code=EXIT_INTERRUPTED)
    for line in result.report.lines():
        print(line)
    kept = ", ".join(result.recipe.keep) or "none"
    verdict = "passed" if result.report.passed else "FAILED (written because of --force)"
    print(f"quality gate {verdict}; layers kept in float: {kept}")
    print(f"Written to {result.output} (the report is in pixie_quantization.json).")
    return 0
