"""``pixie-rerank demo``: the model card's Korean example through PixieScorer, beside the card's published scores."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .template import DEFAULT_INSTRUCTION

__all__ = ["CARD_DOCUMENTS", "CARD_QUERIES", "CARD_SCORES", "register", "run_demo"]

logger = logging.getLogger(__name__)

# The model card's example: five (query, document) pairs and the scores its CrossEncoder code printed.
CARD_QUERIES = [
    "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?",
    "국방 분야에 어떤 위성 서비스가 제공되나요?",
    "텔레픽스의 기술 수준은 어느 정도인가요?",
    "국방 분야에 어떤 위성 서비스가 제공되나요?",
    "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?",
]
CARD_DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "텔레픽스는 우주에서 수집한 정보를 분석하여 '우주 경제(Space Economy)'라는 새로운 가치를 창출하고 있습니다.",
    "텔레픽스는 위성 영상 획득부터 분석, 서비스 제공까지 전 주기를 아우르는 솔루션을 제공합니다.",
]
CARD_SCORES = [0.9999946355819702, 0.8422356247901917, 0.8858100771903992, 0.3226671516895294, 0.6746261715888977]


def run_demo(model: str, *, device: str | None = None, dtype: str = "float32") -> list[float]:
    """Score the card's five pairs with ``model`` and return the scores (the card printed :data:`CARD_SCORES`)."""
    from .scorer import PixieScorer

    scorer = PixieScorer(model, device=device, dtype=dtype)
    return scorer.score_pairs(list(zip(CARD_QUERIES, CARD_DOCUMENTS)), instruction=DEFAULT_INSTRUCTION)


def _run(args: argparse.Namespace) -> int:
    from .loading import ModelLoadError

    try:
        scores = run_demo(args.model, device=args.device, dtype=args.dtype)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model: {args.model}  dtype: {args.dtype}")
    print(f"{'#':>2}  {'card':>8}  {'pixie':>8}  {'diff':>9}  query / document")
    worst = 0.0
    for i, (card, got) in enumerate(zip(CARD_SCORES, scores)):
        worst = max(worst, abs(card - got))
        print(f"{i:>2}  {card:8.5f}  {got:8.5f}  {got - card:+9.2e}  {CARD_QUERIES[i]} / {CARD_DOCUMENTS[i][:30]}…")
    print(f"largest difference from the model card: {worst:.2e}")
    return 0


def register(subparsers: Any) -> None:
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
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", default="float32", help="float32 (the card's precision, default) or bfloat16")
    parser.set_defaults(func=_run)
