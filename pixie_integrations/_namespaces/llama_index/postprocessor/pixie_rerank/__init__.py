"""LlamaIndex's integration namespace: ``from llama_index.postprocessor.pixie_rerank import PixieRerank``.

The same class as ``pixie_integrations.llama_index.PixieRerank`` (the canonical import), where LlamaIndex users look
for a reranker (``llama_index.postprocessor.<name>_rerank``).
"""

from pixie_integrations.llama_index import PixieRerank

__all__ = ["PixieRerank"]
