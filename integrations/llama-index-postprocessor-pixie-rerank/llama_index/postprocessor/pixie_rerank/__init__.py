"""PIXIE-Spell-Reranker for LlamaIndex: ``from llama_index.postprocessor.pixie_rerank import PixieRerank``.

The same class as ``pixie_integrations.llama_index.PixieRerank`` (the implementation lives in the core distribution,
``pixie-integrations``), where LlamaIndex users look for a reranker: ``llama_index.postprocessor.<name>_rerank``, a
namespace this distribution alone fills.
"""

from pixie_integrations.llama_index import RETRIEVAL_SCORE_KEY, PixieRerank

__all__ = ["RETRIEVAL_SCORE_KEY", "PixieRerank"]
