"""Compare rerankers on a BEIR-layout dataset with the model card's NDCG method (see docs/evaluation.md).

Offline, in a minute on a CPU: two tiny random rerankers built here, on the dataset the tests ship::

    python examples/evaluate_beir.py --tiny

Your own data (a folder with corpus.jsonl, queries.jsonl, qrels/test.tsv)::

    python examples/evaluate_beir.py --data ./my-domain --output eval-out \\
        --model telepix/PIXIE-Spell-Reranker-Preview-0.6B --model BAAI/bge-reranker-v2-m3

The same as ``pixie-rerank eval``; this file shows the Python API.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from pixie_integrations.evaluation import evaluate

TINY_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "beir_tiny"


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the shipped test dataset, offline")
    parser.add_argument("--data", type=Path, help="BEIR-layout dataset folder")
    parser.add_argument("--model", action="append", help="hub id or local folder; repeat to compare")
    parser.add_argument("--output", type=Path, help="output folder (default: a temporary one)")
    parser.add_argument("--run", help="first-stage run file (TREC or JSON) instead of BM25")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory() as scratch:
        data, models, device, dtype = args.data, args.model, args.device, args.dtype
        if args.tiny:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from pixie_integrations.testing import build_tiny_encoder_reranker, build_tiny_reranker

            data = args.data or TINY_DATA
            models = [
                str(build_tiny_reranker(Path(scratch) / "tiny-pixie")),
                str(build_tiny_encoder_reranker(Path(scratch) / "tiny-bge")),
            ]
            device, dtype = device or "cpu", dtype or "float32"
        if data is None or not models:
            parser.error("give --tiny, or --data and at least one --model")
        output = args.output or Path(scratch) / "eval-out"
        result = evaluate(data, models, output_dir=output, run=args.run, device=device, dtype=dtype)

        print(result.to_markdown())
        for model in result.models:
            gain = model.avg_ndcg - result.first_stage.metrics.avg_ndcg
            print(
                f"{model.name}: NDCG@10 {model.ndcg[10]:.4f}, Avg. NDCG {model.avg_ndcg:.4f} ({gain:+.4f} over the "
                f"first stage); {model.pairs_scored} pairs scored, {model.cache_hits} from the cache"
            )
        if args.output:
            print(f"\nWritten to {output}: results.md, ndcg.png, <model>/run.trec, <model>/metrics.json")
        else:
            print("\n(temporary output folder; pass --output to keep the files)")


if __name__ == "__main__":
    main()
