"""Checks against the real PIXIE checkpoint. Skipped unless PIXIE_MODEL_PATH points at a local copy."""

from __future__ import annotations

import os

import pytest

from pixie_integrations import PixieScorer
from pixie_integrations.demo import CARD_DOCUMENTS, CARD_QUERIES, CARD_SCORES, run_demo

MODEL_PATH = os.environ.get("PIXIE_MODEL_PATH")
pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        not MODEL_PATH, reason="set PIXIE_MODEL_PATH to a local copy of PIXIE-Spell-Reranker-Preview-0.6B"
    ),
]


def test_model_card_scores_in_float32() -> None:
    assert run_demo(MODEL_PATH, dtype="float32") == pytest.approx(CARD_SCORES, abs=1e-4)  # type: ignore[arg-type]


def test_model_card_scores_in_bfloat16() -> None:
    assert run_demo(MODEL_PATH, dtype="bfloat16") == pytest.approx(CARD_SCORES, abs=2e-2)  # type: ignore[arg-type]


def test_rank_puts_the_matching_document_first() -> None:
    scorer = PixieScorer(MODEL_PATH, dtype="float32")  # type: ignore[arg-type]
    ranked = scorer.rank(CARD_QUERIES[1], CARD_DOCUMENTS)
    assert ranked[0].index == 1
