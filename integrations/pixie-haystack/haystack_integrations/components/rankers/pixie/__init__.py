"""PIXIE-Spell-Reranker for Haystack: ``from haystack_integrations.components.rankers.pixie import PixieRanker``.

The same class as ``pixie_integrations.haystack.PixieRanker`` (the implementation lives in the core distribution,
``pixie-integrations``). Saved pipelines name it by this path, which Haystack's default deserialization allow-list
trusts, and its logs go to the ``haystack_integrations`` loggers that Haystack's logging setup configures: this
distribution alone fills the namespace.
"""

from pixie_integrations.haystack import PixieRanker

__all__ = ["PixieRanker"]
