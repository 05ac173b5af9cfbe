"""``pixie-rerank bench``: its arguments, and the run they ask for, printed as a table (and written as JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..install import install_hint
from . import __doc__ as _PACKAGE_DOC
from .report import format_table
from .run import run_benchmark
from .systems import PEER_SYSTEMS, SETTINGS, missing_bench_extra, system_arg
from .workloads import SHAPES, WORKLOADS

__all__ = ["register"]

logger = logging.getLogger(__name__)

DESCRIPTION = (
    (_PACKAGE_DOC or "").split("\n\nImportable")[0].replace("``", "")
    + f"\n\nInstall the bench extra with {install_hint('bench')}, the bench-peers extra with "
    + f"{install_hint('bench-peers')}."
)
"""``bench --help``'s description: the package docstring without its Sphinx markup and its note for Python callers,
and how to install the extras it names."""


def _run(args: argparse.Namespace) -> int:
    from ..cli_args import fail
    from ..loading import ModelLoadError

    missing = missing_bench_extra(args.systems)
    if missing is not None:
        return fail(missing)
    if args.preset == "cpu":
        args.queries = args.queries or 2
        args.docs = args.docs or 12
    try:
        result = _run_benchmark(args)
    except (ModelLoadError, RuntimeError, ValueError) as exc:
        logger.info("bench failed", exc_info=True)  # -v shows where
        return fail(exc)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    return run_benchmark(
        workload=args.workload,
        model=args.model,
        shape=args.shape or "pixie",
        systems=args.systems,
        device=args.device,
        queries=args.queries,
        docs_per_query=args.docs,
        repeats=args.repeats,
        seed=args.seed,
        show_progress=not args.no_progress,
        model_dir=args.model_dir,
        memory=not args.no_memory,
    )


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to ``pixie-rerank``'s subparsers."""
    from ..cli_args import device, positive_int

    parser = subparsers.add_parser(
        "bench",
        help="time PixieScorer against the model card's CrossEncoder path on the same weights",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="beir",
        help="beir (180-token passages), latency (one query), long (median 2,000 tokens, up to 8,192) or long-8k "
        "(~8,000 tokens per document, as MultiLongDocRetrieval's; time chunked scoring beside whole documents with "
        "--systems pixie pixie-chunk). Default: %(default)s",
    )
    parser.add_argument("--preset", choices=["cpu"], help="cpu: 24 pairs (2 queries x 12 documents) of PIXIE's shape")
    parser.add_argument("--model", help="checkpoint to time (default: a random model of --shape, no download)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random model shape (default: pixie)")
    parser.add_argument("--model-dir", help="keep the random model here (reused across runs)")
    parser.add_argument(
        "--systems",
        nargs="+",
        type=system_arg,
        default=["card-fp32", "card-bf16", "pixie"],
        help="systems to time; the first is the reference. card-fp32, card-bf16 (the model card's code), pixie, "
        "pixie-fp32, pixie-noprefix, pixie-compile, pixie-padded, pixie-chunk (long documents in chunks of 512 "
        "tokens, the best kept; e.g. pixie-chunk:chunk_tokens=256,aggregate=mean), pixie-int8 (pixie-rerank "
        "quantize's int8 recipe, "
        "calibrated here on 32 of the workload's pairs, no gate), or pixie:key=value,... for PixieScorer settings "
        f"(e.g. pixie:token_budget=8192,compile=true; settings: {', '.join(SETTINGS)}); the same weights in "
        f"OpenVINO or ONNX Runtime on CPU: {', '.join(PEER_SYSTEMS)} (batch 4, openvino-w8a8 1; e.g. "
        "openvino-bf16:batch_size=8; openvino-w8a8 is static int8 weights and activations, calibrated on 32 of the "
        "workload's pairs, e.g. openvino-w8a8:calibration_pairs=16; "
        "the bench-peers extra). Default: %(default)s",
    )
    parser.add_argument("--device", type=device, help="cpu, cuda, cuda:N or mps (default: the best available)")
    parser.add_argument("--queries", type=positive_int, help="use only this many queries")
    parser.add_argument("--docs", type=positive_int, help="documents per query")
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the per-system memory runs (each system loaded and run once in a process of its own)",
    )
    parser.set_defaults(func=_run)
