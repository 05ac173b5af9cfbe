"""Long documents: cut the end (truncate) or score chunks and keep the best (chunk), side by side.

python examples/long_documents.py                   # the real model (downloads it once)
python examples/long_documents.py --model ./pixie   # a local copy
python examples/long_documents.py --tiny            # offline: a tiny random model (the scores mean nothing)

Three long reports, each with its one relevant passage at a different depth. With max_length capped, truncation
never sees a passage past the cap; chunking reads every chunk and names the one that won.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from pixie_integrations import DEFAULT_MODEL, ModelLoadError, PixieScorer

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
ANSWER = "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다."
FILLER = [
    "The committee reviewed the quarterly budget and approved the new office lease.",
    "회의에서는 다음 분기 채용 계획과 사무실 이전 일정이 논의되었습니다.",
    "Maintenance of the ground station antennas is scheduled for the second week of May.",
    "직원 교육 프로그램은 온라인과 오프라인으로 병행하여 운영됩니다.",
]


def report(answer_at: int, sentences: int = 60) -> str:
    """A long report of filler sentences with the relevant passage at position ``answer_at``."""
    body = [FILLER[i % len(FILLER)] for i in range(sentences)]
    body.insert(answer_at, ANSWER)
    return " ".join(body)


DOCUMENTS = [report(2), report(30), report(58)]  # the passage early, in the middle, at the end


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny random model (offline)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best available)")
    parser.add_argument("--max-length", type=int, default=512, help="the cap of one input (default 512)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # the truncation warning
    model = args.model
    if args.tiny:
        from pixie_integrations.testing import build_tiny_reranker

        model = str(build_tiny_reranker(tempfile.mkdtemp(prefix="tiny-pixie-")))
    try:
        scorer = PixieScorer(model, device=args.device, max_length=args.max_length)
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return 1
    truncated = scorer.score(QUERY, DOCUMENTS)
    chunked = scorer.rank(QUERY, DOCUMENTS, long_documents="chunk", chunk_tokens=128, chunk_boundary="sentence")
    print(
        f"max_length={scorer.max_length}; each document is about {len(scorer.tokenizer(DOCUMENTS[0]).input_ids)} tokens"
    )
    print(f"{'document':<10}{'truncate':>10}{'chunk/max':>11}  winning chunk")
    for result in sorted(chunked, key=lambda r: r.index):
        chunk = result.chunk
        assert chunk is not None
        where = f"{chunk.index + 1} of {chunk.chunks}, characters {chunk.start}-{chunk.end}"
        print(f"{result.index:<10}{truncated[result.index]:>10.4f}{result.score:>11.4f}  {where}")
        print(f"{'':<10}{result.document[chunk.start : chunk.end][:70]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
