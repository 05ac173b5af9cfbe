"""Packed batches (no padding; the default on CPUs and on CUDA), optionally compiled, against padded batches.

python examples/packed_batches.py                     # the real model on the best device (downloads it once)
python examples/packed_batches.py --model ./pixie     # a local copy
python examples/packed_batches.py --device cpu        # on a CPU: each pair's attention as blocked matrix multiplies
python examples/packed_batches.py --compile           # also torch.compile (on CUDA: one graph; cached on disk)
python examples/packed_batches.py --tiny              # offline: a tiny random model (same scores; too small to
                                                      # show a speed-up)

Prints how each scorer runs, the largest score difference between them, and their time for 100 documents.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

from pixie_integrations import DEFAULT_MODEL, ModelLoadError, PixieScorer

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
PASSAGES = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "텔레픽스는 위성 영상 획득부터 분석, 서비스 제공까지 전 주기를 아우르는 솔루션을 제공합니다.",
]
# 100 documents of very different lengths: what padding wastes compute on.
DOCUMENTS = [" ".join(PASSAGES[: 1 + i % 4]) * (1 + i % 7) for i in range(100)]


def timed(scorer: PixieScorer) -> tuple[list[float], float]:
    scorer.score(QUERY, DOCUMENTS[:8])  # warm-up: kernels, and compilation with --compile
    start = time.perf_counter()
    scores = scorer.score(QUERY, DOCUMENTS)
    return scores, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny random model (offline)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: the best available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the packed model too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the chosen path, compile progress
    model = args.model
    if args.tiny:
        from pixie_integrations.testing import build_tiny_reranker

        model = str(build_tiny_reranker(tempfile.mkdtemp(prefix="tiny-pixie-")))
    try:
        # pack=True: the default on CPUs and on CUDA GPUs with bf16 (asked for here so that --compile keeps it).
        packed = PixieScorer(model, device=args.device, pack=True, compile=args.compile)
        padded = PixieScorer(model, device=args.device, pack=False)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    packed_scores, packed_s = timed(packed)
    padded_scores, padded_s = timed(padded)
    print(f"{packed!r}: pack={packed.pack}, compile={args.compile}")
    print(f"packed: {packed_s * 1000:.0f} ms, padded: {padded_s * 1000:.0f} ms for {len(DOCUMENTS)} documents")
    if args.tiny:
        print("(a tiny model: these times are per-call overhead, not the real model's speed; drop --tiny to time it)")
    print(f"largest score difference: {max(abs(a - b) for a, b in zip(packed_scores, padded_scores)):.1e}")
    best = max(range(len(DOCUMENTS)), key=packed_scores.__getitem__)
    print(f"best document [{best}] {packed_scores[best]:.5f}: {DOCUMENTS[best][:60]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
