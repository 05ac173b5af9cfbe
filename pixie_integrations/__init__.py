"""PIXIE-Spell-Reranker as a drop-in reranking step for LangChain, LlamaIndex and Haystack.

The core is framework-free: ``from pixie_integrations import PixieScorer``. The adapters live in
``pixie_integrations.langchain``, ``pixie_integrations.llama_index`` and ``pixie_integrations.haystack`` and need
their extras (``pip install "pixie-integrations[langchain]"`` and so on).
"""

from __future__ import annotations

import logging

from .families import ModelFamily
from .loading import ModelLoadError
from .scorer import DEFAULT_MODEL, PixieScorer, RankResult
from .template import DEFAULT_INSTRUCTION, format_document, format_query

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_MODEL",
    "ModelFamily",
    "ModelLoadError",
    "PixieScorer",
    "RankResult",
    "format_document",
    "format_query",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
