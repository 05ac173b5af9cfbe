"""PIXIE-Spell-Reranker as a drop-in reranking step for LangChain, LlamaIndex and Haystack.

The core is framework-free: ``from pixie_integrations import PixieScorer``. The adapters live in
``pixie_integrations.langchain``, ``pixie_integrations.llama_index`` and ``pixie_integrations.haystack`` and need
their extras, each of which pulls the framework's own distribution (``langchain-pixie``,
``llama-index-postprocessor-pixie-rerank``, ``pixie-haystack``; :mod:`pixie_integrations.install` says how). ``pixie_integrations.serving`` serves the
scorer over HTTP and holds ``RemoteScorer``, a client the LangChain and LlamaIndex adapters take as their ``scorer``
(anything satisfying :class:`Scorer` does).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .logs import add_fallback_handler
from .template import DEFAULT_INSTRUCTION, format_document, format_query

if TYPE_CHECKING:
    from .chunking import LongDocuments
    from .engine import EngineOverloadedError, ScoringEngine, ScoringTimeoutError
    from .families import ModelFamily
    from .loading import ModelLoadError, NotARerankerError
    from .protocols import Scorer
    from .ranking import ChunkSpan, RankResult
    from .scorer import DEFAULT_MODEL, PixieScorer

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_MODEL",
    "ChunkSpan",
    "EngineOverloadedError",
    "LongDocuments",
    "ModelFamily",
    "ModelLoadError",
    "NotARerankerError",
    "PixieScorer",
    "RankResult",
    "Scorer",
    "ScoringEngine",
    "ScoringTimeoutError",
    "format_document",
    "format_query",
]

__version__ = "0.1.0"

# Names served lazily (PEP 562), so that `import pixie_integrations` and `pixie-rerank --help` do not pay for torch.
_LAZY = {
    "DEFAULT_MODEL": ".scorer",
    "PixieScorer": ".scorer",
    "RankResult": ".ranking",
    "ChunkSpan": ".ranking",
    "LongDocuments": ".chunking",
    "ModelFamily": ".families",
    "ModelLoadError": ".loading",
    "NotARerankerError": ".loading",
    "Scorer": ".protocols",
    "ScoringEngine": ".engine",
    "EngineOverloadedError": ".engine",
    "ScoringTimeoutError": ".engine",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)


# Warnings reach stderr while the application has configured no logging (see .logs); any configuration takes over.
add_fallback_handler(logging.getLogger(__name__))
