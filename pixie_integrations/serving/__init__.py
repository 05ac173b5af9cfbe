"""Serving PIXIE over HTTP when one process is not enough.

- :func:`create_app` / :func:`serve`: a FastAPI app around one :class:`~pixie_integrations.PixieScorer`, with the
  Cohere/Jina rerank API that vLLM also serves (``POST /rerank``, ``/v1/rerank``), ``POST /score``, ``GET /health``
  and ``GET /v1/models``. ``pixie-rerank serve`` runs it.
- :class:`RemoteScorer`: a client with ``PixieScorer``'s ``score`` / ``score_pairs`` / ``rank`` (and native async
  ``ascore`` / ``ascore_pairs`` / ``arank``), for this server and its Ray Serve deployment (``api="pixie"``), vLLM
  (``api="vllm"``), or TEI and Infinity for encoder cross-encoders (``api="tei"``, ``api="infinity"``). The LangChain
  and LlamaIndex ``PixieRerank`` take it as ``scorer=``.

Needs the ``serve`` extra (:func:`pixie_integrations.install.install_hint` says how). See docs/serving.md.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ..install import install_hint

# Checked, not imported: `pixie-rerank --help` imports this package (for the serve command) and must stay fast.
_MISSING = [name for name in ("fastapi", "httpx", "tenacity") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(f"pixie_integrations.serving needs {' and '.join(_MISSING)}: {install_hint('serve')}")

if TYPE_CHECKING:
    from .client import RemoteScorer, RemoteScorerError
    from .limits import ServerLimits
    from .server import create_app, serve, serve_in_thread

__all__ = ["RemoteScorer", "RemoteScorerError", "ServerLimits", "create_app", "serve", "serve_in_thread"]

# Served lazily (PEP 562): importing the package (or only the client) does not import torch.
_LAZY = {
    "RemoteScorer": ".client",
    "RemoteScorerError": ".client",
    "ServerLimits": ".limits",
    "create_app": ".server",
    "serve": ".server",
    "serve_in_thread": ".server",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
