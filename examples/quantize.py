"""Int8 checked on your own data: quantize, read the gate's figures, and rerank with the int8 model.

python examples/quantize.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --data ./my-domain   # a BEIR folder
python examples/quantize.py --model ./pixie --data pairs.jsonl                                # or a JSONL file
python examples/quantize.py --tiny      # offline: a tiny random model and generated pairs (shows the flow only:
                                        # random weights say nothing about how the real model fares)

Writes the int8 model to --output (default: a temporary folder) only if the quality gate holds; exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from pathlib import Path

from pixie_integrations import DEFAULT_MODEL, ModelLoadError, PixieScorer
from pixie_integrations.quantization import GateFailedError, GateThresholds, quantize

WORDS = ["텔레픽스", "위성", "데이터", "영상", "분석", "서비스", "해양", "자원", "농업", "국방", "기술", "서울", "날씨", "satellite", "imagery", "ocean", "agriculture", "defence", "analysis", "service", "retrieval", "korean"]


def tiny_setup(folder: Path) -> tuple[str, str]:
    """A tiny random reranker and a JSONL of generated queries and documents (with judgments)."""
    from pixie_integrations.testing import build_tiny_reranker

    model = build_tiny_reranker(folder / "tiny-model", seed=1)
    rng = random.Random(0)
    data = folder / "pairs.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        for _ in range(14):
            documents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))) for _ in range(10)]
            row = {
                "query": " ".join(rng.choice(WORDS) for _ in range(4)),
                "documents": documents,
                "relevance": [rng.choice((0, 0, 1, 2)) for _ in documents],
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(model), str(data)


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", help="a BEIR folder or a JSONL file of queries and documents")
    parser.add_argument("--output", help="where to write the int8 model (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model and generated pairs (offline)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="pixie-quantize-example-"))
    model, data = tiny_setup(work) if args.tiny else (args.model, args.data)
    if data is None:
        parser.error("--data is required (or --tiny)")
    # The tiny random model's scores sit close together, so its NDCG on random judgments is noise: only the
    # ranking agreement is held to the default there.
    thresholds = GateThresholds(max_ndcg_drop=1.0) if args.tiny else GateThresholds()
    sizes = {"calibration_queries": 4, "check_queries": 8, "candidates": 10} if args.tiny else {}
    try:
        result = quantize(model, data, args.output or work / "int8", thresholds=thresholds, **sizes)
    except GateFailedError as exc:
        print("\n".join(exc.report.lines()))
        print(f"not written: {'; '.join(exc.report.failed)}", file=sys.stderr)
        return 1
    except (ModelLoadError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(result.report.lines()))
    print(f"written to {result.output}; layers kept in float: {', '.join(result.recipe.keep) or 'none'}")

    scorer = PixieScorer(result.output)  # int8 where this CPU has int8 units; the float weights elsewhere
    query = "위성 데이터 활용 분야"
    documents = ["텔레픽스는 위성 데이터를 분석하여 서비스를 제공합니다.", "오늘 서울의 날씨는 맑습니다."]
    for ranked in scorer.rank(query, documents):
        print(f"{ranked.score:.4f}  {documents[ranked.index]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
