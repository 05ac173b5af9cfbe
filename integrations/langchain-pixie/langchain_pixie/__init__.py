"""PIXIE-Spell-Reranker for LangChain, as a partner package: ``from langchain_pixie import PixieRerank``.

The same class as ``pixie_integrations.langchain.PixieRerank`` (the implementation lives in the core distribution,
``pixie-integrations``, which this one depends on): a local drop-in for ``CohereRerank``.
"""

from pixie_integrations.langchain import DEFAULT_MODEL, PixieRerank

__all__ = ["DEFAULT_MODEL", "PixieRerank"]
