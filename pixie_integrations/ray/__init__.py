"""Scale-out on Ray: Ray Serve replicas of the rerank server, and Ray Data batch reranking.

- :func:`build_app` / :func:`app`: a Ray Serve application serving the same HTTP API as ``pixie-rerank serve`` (the
  same FastAPI app, one loaded model per replica), with ``num_replicas``, ``autoscaling_config`` and
  ``ray_actor_options`` (GPUs per replica, fractions included). ``serve run pixie_integrations.ray:app model=...``.
- :class:`PixieBatchScorer` / :func:`rerank_dataset`: a callable class for ``Dataset.map_batches`` on an actor pool
  that adds scores (and ranks) to rows of (query, candidates) or (query, document), keeping every input column.

Needs the ``ray`` extra (:func:`pixie_integrations.install.install_hint` says how). See docs/scaling.md.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ..install import install_hint

# Checked, not imported: importing Ray starts nothing, but it is slow; the names below load it when first used.
if importlib.util.find_spec("ray") is None:
    raise ImportError(f"pixie_integrations.ray needs Ray: {install_hint('ray')}")

if TYPE_CHECKING:
    from .data import PixieBatchScorer, rerank_dataset
    from .deployment import REPLICA_HEADER, app, build_app

__all__ = ["REPLICA_HEADER", "PixieBatchScorer", "app", "build_app", "rerank_dataset"]

_LAZY = {
    "REPLICA_HEADER": ".deployment",
    "app": ".deployment",
    "build_app": ".deployment",
    "PixieBatchScorer": ".data",
    "rerank_dataset": ".data",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
