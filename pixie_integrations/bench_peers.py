"""The bench's peers, by their first import path: they now live in :mod:`pixie_integrations.bench.peers`."""

from __future__ import annotations

from .bench.peers import DEFAULT_BATCH_SIZE, PEERS, PeerScorer, PeerSpec, missing_peer_modules

__all__ = ["DEFAULT_BATCH_SIZE", "PEERS", "PeerScorer", "PeerSpec", "missing_peer_modules"]
