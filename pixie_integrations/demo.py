"""The model card's Korean example and its published scores (``pixie-rerank demo`` runs it)."""

from __future__ import annotations

import logging

from .template import DEFAULT_INSTRUCTION

__all__ = ["CARD_DOCUMENTS", "CARD_QUERIES", "CARD_SCORES", "run_demo"]

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
