"""What the framework adapters need from a scorer: the :class:`Scorer` protocol.

:class:`~pixie_integrations.PixieScorer` (in-process) and
:class:`~pixie_integrations.serving.RemoteScorer` (a PIXIE or vLLM server) both satisfy it, so the LangChain
and LlamaIndex adapters' ``scorer=`` takes either (or your own class). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """Scores documents against a query, in input order, as Python floats.

    ``isinstance(obj, Scorer)`` only checks that the members exist (``runtime_checkable``), not their signatures.
    """

    @property
    def model_name(self) -> str:
        """The checkpoint the scores come from (hub id, path or served name): adapters report it in traces."""
        ...

    @property
    def instruction(self) -> str:
        """The task instruction used when a call gives none."""
        ...

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        """One score per document, in input order: the probability of relevance (the logit with ``raw=True``)."""
        ...
