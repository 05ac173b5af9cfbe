"""Ray Serve: the ``pixie-rerank serve`` app on as many replicas as Ray gives it.

Each replica builds the server's own FastAPI app (:func:`~pixie_integrations.serving.server.create_app`) around one
:class:`~pixie_integrations.PixieScorer` it loads once when it starts, so routes, request and response shapes,
errors, limits and the in-replica batching are exactly those of ``pixie-rerank serve``. Ray Serve spreads requests
over the replicas, scales them (``autoscaling_config``) and places them on GPUs (``ray_actor_options``).

Every response carries the header :data:`REPLICA_HEADER` naming the replica that answered.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray import serve

from ..chunking import LongDocuments, resolve_long_documents

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_DEPLOYMENT_NAME", "REPLICA_HEADER", "app", "build_app"]

logger = logging.getLogger(__name__)

DEFAULT_DEPLOYMENT_NAME = "PixieReranker"
REPLICA_HEADER = "x-pixie-replica"
"""Response header naming the Ray Serve replica (its id) that answered."""

# Options of build_app that configure the deployment or the app, not the scorer (for the `serve run` builder).
_JSON_OPTIONS = ("autoscaling_config", "ray_actor_options", "app_options")
_INT_OPTIONS = ("max_ongoing_requests",)
_STR_OPTIONS = ("name", "served_model_name", "api_key")


def build_app(
    model: str | os.PathLike[str],
    *,
    num_replicas: int | str | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    name: str = DEFAULT_DEPLOYMENT_NAME,
    served_model_name: str | None = None,
    api_key: str | None = None,
    app_options: Mapping[str, Any] | None = None,
    long_documents: str | Mapping[str, Any] | LongDocuments | None = None,
    **scorer_settings: Any,
) -> Application:
    """A Ray Serve application serving ``model`` with the ``pixie-rerank serve`` HTTP API.

    Run it with ``serve.run(build_app(...), route_prefix="/")``; each replica loads the model once, when it starts.

    Args:
        model: Hub id or local folder, as for :class:`~pixie_integrations.PixieScorer` (every node must reach it).
        num_replicas: Fixed number of replicas, or ``"auto"`` for Ray's default autoscaling. ``None``: Ray's
            default (one), or what ``autoscaling_config`` decides.
        autoscaling_config: Ray Serve autoscaling, e.g. ``{"min_replicas": 1, "max_replicas": 4,
            "target_ongoing_requests": 8}``.
        ray_actor_options: Resources of each replica, e.g. ``{"num_gpus": 1}``, or ``{"num_gpus": 0.5}`` for two
            replicas per GPU; ``{"num_cpus": 2}`` on CPU.
        max_ongoing_requests: Requests a replica takes at once before Ray queues them at the proxy. ``None``:
            Ray's default (5), which also caps how many requests the server's in-replica batching can merge; raise
            it (e.g. 32) for many small concurrent requests.
        name: The deployment's name.
        served_model_name: Passed to ``create_app``: the name clients see and may send as ``model``.
        api_key: Passed to ``create_app``: require ``Authorization: Bearer <api_key>``.
        app_options: Further keyword arguments of ``create_app`` (limits and the like), passed through as given.
        long_documents: The server's default for requests that ask for no strategy, as ``pixie-rerank serve
            --long-documents``: ``"truncate"``, ``"chunk"``, a :class:`~pixie_integrations.LongDocuments` or its
            ``to_dict()`` (``{"strategy": "chunk", "chunk_tokens": 512}``). Requests choose per request as on the
            server (Cohere's ``max_chunks_per_doc`` / ``max_tokens_per_doc``, this server's own fields).
        **scorer_settings: Passed to ``PixieScorer`` on every replica (``device``, ``dtype``, ``max_length``,
            ``instruction``, ...).
    """
    model_ref = os.fspath(model)
    app_kwargs = dict(app_options or {})
    if served_model_name is not None:
        app_kwargs["served_model_name"] = served_model_name
    if api_key is not None:
        app_kwargs["api_key"] = api_key
    if long_documents is not None:  # checked here, in the driver, not on each replica
        if isinstance(long_documents, Mapping):
            long_documents = LongDocuments.from_dict(long_documents)
        app_kwargs["long_documents"] = resolve_long_documents(long_documents)
    settings = dict(scorer_settings)

    # A plain function, so Ray calls it on each replica when it starts (not here, in the driver): the replica loads
    # its own scorer and builds the app around it.
    def build_replica_app() -> FastAPI:
        return _replica_app(model_ref, settings, app_kwargs)

    deployment_options: dict[str, Any] = {"name": name}
    for key, value in (
        ("num_replicas", num_replicas),
        ("autoscaling_config", dict(autoscaling_config) if autoscaling_config is not None else None),
        ("ray_actor_options", dict(ray_actor_options) if ray_actor_options is not None else None),
        ("max_ongoing_requests", max_ongoing_requests),
    ):
        if value is not None:
            deployment_options[key] = value
    deployment = serve.deployment(serve.ingress(build_replica_app)(), **deployment_options)
    return deployment.bind()


def app(args: dict[str, Any]) -> Application:
    """The application builder of ``serve run pixie_integrations.ray:app model=... num_replicas=2 device=cpu``.

    ``args`` are :func:`build_app`'s keyword arguments; from the command line every value is a string, so numbers
    and booleans are converted to the type ``PixieScorer`` and ``build_app`` expect, and ``autoscaling_config``,
    ``ray_actor_options`` and ``app_options`` are read as JSON (``ray_actor_options='{"num_gpus": 0.5}'``). A Serve
    config file gives them typed, under ``applications[].args``.
    """
    options = dict(args)
    if "model" not in options:
        raise ValueError("pixie_integrations.ray:app needs model=<hub id or folder>")
    model = str(options.pop("model"))
    deployment: dict[str, Any] = {}
    for key in _JSON_OPTIONS:
        if key in options:
            deployment[key] = _json_value(key, options.pop(key))
    for key in _INT_OPTIONS:
        if key in options:
            deployment[key] = int(options.pop(key))
    for key in _STR_OPTIONS:
        if key in options:
            deployment[key] = str(options.pop(key))
    if "long_documents" in options:  # "chunk", "truncate", or the settings as JSON
        value = options.pop("long_documents")
        deployment["long_documents"] = value if value in ("chunk", "truncate") else _json_value("long_documents", value)
    if "num_replicas" in options:
        replicas = options.pop("num_replicas")
        deployment["num_replicas"] = replicas if replicas == "auto" else int(replicas)
    return build_app(model, **deployment, **_scorer_settings(options))


# -- on each replica -------------------------------------------------------------------------------------------------
def _replica_app(model: str, settings: dict[str, Any], app_kwargs: dict[str, Any]) -> FastAPI:
    from ..scorer import PixieScorer
    from ..serving.server import create_app

    scorer = PixieScorer(model, **settings)
    # The first forward pass pays for lazy initialisation: not a client's request (as `pixie-rerank serve` does).
    scorer.score("warm-up", ["warm-up"])
    fastapi_app = create_app(scorer, **app_kwargs)
    replica = _replica_id()
    fastapi_app.add_middleware(_ReplicaHeader, value=replica)
    logger.info("Replica %s serves %r on %s.", replica, scorer.model_name, scorer.device)
    return fastapi_app


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica (or an older Ray): the process is identity enough
        return f"pid-{os.getpid()}"


class _ReplicaHeader:
    """Pure ASGI middleware adding :data:`REPLICA_HEADER` to every HTTP response (streaming untouched)."""

    def __init__(self, app: ASGIApp, *, value: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode("latin-1"), value.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_tagged)


# -- command-line values ---------------------------------------------------------------------------------------------
def _json_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"{key} must be JSON, e.g. {key}='{{\"num_gpus\": 0.5}}'; got {value!r}") from exc


def _scorer_settings(options: dict[str, Any]) -> dict[str, Any]:
    """``PixieScorer`` keyword arguments, converted from strings to the types its signature names."""
    if not options:
        return {}
    import typing

    from pydantic import ConfigDict, TypeAdapter

    from ..scorer import PixieScorer

    hints = typing.get_type_hints(PixieScorer.__init__)
    hints.pop("return", None)
    hints.pop("model", None)
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)}: pixie_integrations.ray:app takes build_app's options and "
            f"PixieScorer's ({', '.join(sorted(hints))})"
        )
    settings: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, str) and key in ("model_kwargs", "tokenizer_kwargs"):
            value = _json_value(key, value)
        if isinstance(value, str) and value.lower() in ("none", "null"):
            value = None
        adapter: TypeAdapter[Any] = TypeAdapter(hints[key], config=ConfigDict(arbitrary_types_allowed=True))
        settings[key] = adapter.validate_python(value)
    return settings
