"""The kinds of reranker checkpoints the scorer runs, and how a checkpoint's config tells which it is."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["ModelFamily", "detect_family"]

# Decoder backbones whose seq-cls / causal-LM checkpoints use the Qwen3-Reranker prompt template.
_TEMPLATE_MODEL_TYPES = frozenset({"qwen3", "qwen2", "qwen3_moe", "qwen2_moe"})


class ModelFamily(str, Enum):
    """How a checkpoint turns a (query, document) pair into a relevance score."""

    QWEN3_SEQ_CLS = "qwen3-seq-cls"
    """Qwen3 sequence classifier with one logit (PIXIE): prompt template, sigmoid of the logit."""

    QWEN3_CAUSAL_LM = "qwen3-causal-lm"
    """Original Qwen3-Reranker causal LM: prompt template, P("yes") from the "yes"/"no" logits at the last token."""

    ENCODER = "encoder"
    """Encoder cross-encoder with one logit (bge-reranker-v2-m3 and kin): plain pair encoding, sigmoid."""

    @property
    def uses_template(self) -> bool:
        """Whether inputs are wrapped in the PIXIE / Qwen3-Reranker prompt template."""
        return self is not ModelFamily.ENCODER


def detect_family(config: Any) -> ModelFamily:
    """Tell the family from a ``transformers`` config (its ``architectures`` and ``model_type``).

    Raises:
        ValueError: the config describes no supported reranker (for example a classifier with several labels).
    """
    architectures = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "")
    if any(a.endswith("ForCausalLM") for a in architectures):
        if model_type not in _TEMPLATE_MODEL_TYPES:
            raise ValueError(
                f"A causal LM of type {model_type!r} is not a known reranker; only Qwen3-Reranker-style "
                "checkpoints score with the yes/no recipe. Pass family=... to force one."
            )
        return ModelFamily.QWEN3_CAUSAL_LM
    num_labels = getattr(config, "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"Expected a reranker with one output logit, got a config with num_labels={num_labels} "
            f"(architectures={architectures}). Pass family=... to force one."
        )
    if model_type in _TEMPLATE_MODEL_TYPES:
        return ModelFamily.QWEN3_SEQ_CLS
    return ModelFamily.ENCODER
