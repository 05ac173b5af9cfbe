"""``pixie-rerank eval``: the model card's NDCG table for your rerankers on a BEIR-layout dataset."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ..cli_args import (
    EXIT_INTERRUPTED,
    add_device_dtype,
    add_long_document_flags,
    fail,
    long_documents_from,
    positive_int,
)
from ..install import install_hint

__all__ = ["register"]

logger = logging.getLogger(__name__)

_DEFAULT_MODEL = "telepix/PIXIE-Spell-Reranker-Preview-0.6B"

_EPILOG = """\
examples:
  pixie-rerank eval --data ./my-domain --model telepix/PIXIE-Spell-Reranker-Preview-0.6B \\
      --model BAAI/bge-reranker-v2-m3 --output eval-out
  pixie-rerank eval --data ./scifact --run splade.trec --model ./PIXIE --output out --dtype bfloat16
  pixie-rerank eval --data ./arguana --data ./fiqa --model ./PIXIE --output out   # mean over datasets
  pixie-rerank eval --data ./my-long-docs --model ./PIXIE --long-documents chunk --chunk-tokens 512 --output out
  pixie-rerank eval --data ./my-long-docs --model ./PIXIE --max-length 2048 \
      --compare-long-documents truncate,chunk:512,chunk:512:mean --output out   # one table of strategies

A dataset folder holds corpus.jsonl (_id, title, text), queries.jsonl (_id, text) and qrels/<split>.tsv
(query-id, corpus-id, score). Re-running with the same --output reuses every score already computed.
"""


def register(subparsers: Any) -> None:
    """Add the ``eval`` command to ``pixie-rerank``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate rerankers with the model card's NDCG method on BEIR-format data",
        description=(
            "Rerank a first-stage shortlist (BM25, or --run) of each judged query with each model and report "
            "NDCG@1/3/5/10 and their mean (Avg. NDCG) as the model card's tables do."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="BEIR-layout dataset folder; repeat for several datasets (the table then averages them)",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help=f"hub id or local folder; repeat to compare (default: $PIXIE_MODEL_PATH or {_DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="OUT",
        help="output folder: <model>/run.trec, <model>/metrics.json, results.md, ndcg.png, scores cache",
    )
    parser.add_argument("--split", default="test", help="qrels split: qrels/<split>.tsv (default: test)")
    parser.add_argument(
        "--run",
        action="append",
        metavar="FILE",
        help="run file (TREC, or JSON {qid: {docid: score}}) to take the shortlist from instead of BM25 (e.g. a SPLADE run, as the "
        "card's Korean tables used); with several --data, one --run per --data, in order",
    )
    parser.add_argument(
        "--candidates",
        type=positive_int,
        default=100,
        metavar="K",
        help="shortlist depth per query (default: 100, the card's candidate_k)",
    )
    parser.add_argument(
        "--k",
        type=positive_int,
        nargs="+",
        default=[1, 3, 5, 10],
        metavar="K",
        help="NDCG cut-offs (default: 1 3 5 10); Avg. NDCG is their mean",
    )
    parser.add_argument(
        "--instruction",
        default=None,
        help="the reranker's task instruction (default: the card's web-search instruction)",
    )
    add_device_dtype(parser)
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        metavar="N",
        help="most tokens per (query, document) input, template included (default: the model's)",
    )
    parser.add_argument(
        "--batch-size",
        "--batch",
        dest="batch_size",
        type=positive_int,
        default=None,
        metavar="N",
        help="most pairs per forward pass (default: no cap beyond the token budget)",
    )
    parser.add_argument(
        "--token-budget",
        type=positive_int,
        default=None,
        metavar="N",
        help="most padded tokens per forward pass (default: 16384 on CUDA, 8192 on MPS, 1024 on CPU)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow checkpoints with their own code (gte-multilingual, jina rerankers)",
    )
    parser.add_argument(
        "--keep-identical-ids",
        action="store_true",
        help="keep candidates whose id equals the query id (BEIR drops them by default; keep them "
        "when your query and document ids merely collide)",
    )
    parser.add_argument(
        "--drop-unknown-qrels",
        action="store_true",
        help="drop judgments naming documents missing from the corpus (BEIR keeps them)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the score cache")
    parser.add_argument("--no-plot", action="store_true", help="do not draw ndcg.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_long_document_flags(
        parser,
        default_help="how candidates longer than --max-length are scored: truncate (cut the end; the default) or "
        "chunk (score chunks, keep the best)",
    )
    parser.add_argument(
        "--compare-long-documents",
        metavar="STRATEGIES",
        help="evaluate one model on one --data folder once per strategy and print one table beside the truncate "
        "(whole-document) row: " + _strategy_help(),
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="score on Ray Data (the local Ray instance, or the cluster RAY_ADDRESS names): an actor pool, one "
        f"model per actor, for corpora too large for one process; same metrics ({install_hint('ray')})",
    )
    parser.set_defaults(func=_run)


def _strategy_help() -> str:
    from .long_documents import SPEC_HELP

    return SPEC_HELP


def _run(args: argparse.Namespace) -> int:
    models = args.model or [os.environ.get("PIXIE_MODEL_PATH") or _DEFAULT_MODEL]
    if args.run and len(args.run) != len(args.data):
        return fail(f"{len(args.run)} --run files for {len(args.data)} --data folders; give one per folder")
    try:
        long_documents = long_documents_from(args)
        strategies = None
        if args.compare_long_documents is not None:
            from .long_documents import parse_strategies

            strategies = parse_strategies(args.compare_long_documents)
    except ValueError as exc:
        return fail(exc)
    if strategies is not None and (len(args.data) != 1 or len(models) != 1 or args.long_documents is not None):
        return fail(
            "--compare-long-documents compares the strategies of one --model on one --data folder, and sets "
            "--long-documents itself: give one of each and leave --long-documents out"
        )
    try:
        from ..loading import ModelLoadError
        from .data import DataError
        from .runner import evaluate, evaluate_suite
    except ImportError as exc:
        return fail(f"{exc}; {install_hint('eval')}")
    options: dict[str, Any] = {
        "split": args.split,
        "candidates": args.candidates,
        "k_values": args.k,
        "instruction": args.instruction,
        "device": args.device,
        "dtype": args.dtype,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "token_budget": args.token_budget,
        "trust_remote_code": args.trust_remote_code,
        "ignore_identical_ids": not args.keep_identical_ids,
        "drop_unknown_qrels": args.drop_unknown_qrels,
        "cache": not args.no_cache,
        "show_progress_bar": not args.no_progress,
        "plot": not args.no_plot,
        "engine": "ray" if args.ray else "local",
    }
    try:
        if strategies is not None:
            from .long_documents import compare_long_documents

            comparison = compare_long_documents(
                args.data[0], models[0], strategies, output_dir=args.output, run=(args.run or [None])[0], **options
            )
            print(comparison.to_markdown())
            print(f"Written to {args.output}: long_documents.md, long_documents.json and one folder per strategy.")
            return 0
        options["long_documents"] = long_documents
        if len(args.data) == 1:
            result = evaluate(args.data[0], models, output_dir=args.output, run=(args.run or [None])[0], **options)
            print(result.to_markdown())
        else:
            from pathlib import Path

            runs = None
            if args.run:
                runs = {Path(d).name: r for d, r in zip(args.data, args.run)}
            suite = evaluate_suite(args.data, models, output_dir=args.output, runs=runs, **options)
            print(suite.to_markdown())
    except (DataError, ModelLoadError, ImportError, ValueError) as exc:
        logger.info("eval failed", exc_info=True)  # -v shows where
        return fail(exc)
    except KeyboardInterrupt:
        # Every score computed so far is committed to the cache: the same command picks up from there.
        if args.no_cache:
            return fail("interrupted", code=EXIT_INTERRUPTED)
        return fail(
            f"interrupted; the scores computed so far are cached in {args.output}: run the same command again to "
            "resume",
            code=EXIT_INTERRUPTED,
        )
    files = "results.md, results.json" + ("" if args.no_plot else ", ndcg.png")  # --no-plot draws no chart
    print(f"Written to {args.output}: {files} and one folder per model (run.trec, metrics.json).")
    return 0
