"""Haystack's integration namespace: ``from haystack_integrations.components.rankers.pixie import PixieRanker``.

The same class as ``pixie_integrations.haystack.PixieRanker`` (the canonical import). Saved pipelines name it by
this path, which Haystack's default deserialization allow-list trusts, and its logs go to the
``haystack_integrations`` loggers that Haystack's logging setup configures.
"""

from pixie_integrations.haystack import PixieRanker

__all__ = ["PixieRanker"]
