"""PIXIE-Spell-Reranker as a Haystack ranker: ``from pixie_integrations.haystack import PixieRanker``.

A drop-in for ``SentenceTransformersSimilarityRanker``: connect it after a retriever
(``p.connect("retriever.documents", "ranker.documents")``). It scores with the shared
:class:`~pixie_integrations.PixieScorer`, so it gives the model card's exact scores and shares loaded weights with
every other adapter in the process. With ``api_base_url`` it scores on a server instead (``pixie-rerank serve``, or
vLLM with ``api="vllm"``) through :class:`~pixie_integrations.serving.RemoteScorer`, and loads no model.
"""

# No ``from __future__ import annotations``: Haystack reads the run() signature with ``inspect.signature`` to build
# its input sockets, and postponed (string) annotations would break its connection type checks.

import asyncio
import copy
import dataclasses
import logging
import math
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Literal

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.core.serialization import generate_qualified_class_name
    from haystack.tracing import tracer as haystack_tracer
    from haystack.utils import ComponentDevice, Secret
    from haystack.utils.hf import deserialize_hf_model_kwargs, serialize_hf_model_kwargs
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    from .install import install_hint

    raise ImportError(
        f"PixieRanker needs Haystack: {install_hint('haystack')} (importing haystack failed: {exc})"
    ) from exc

import torch

from .chunking import LongDocuments, resolve_long_documents
from .loading import resolve_dtype
from .logs import add_fallback_handler
from .protocols import ascore_documents, score_documents
from .ranking import CHUNK_METADATA_KEY, ChunkSpan
from .scorer import DEFAULT_MODEL, PixieScorer
from .template import DEFAULT_INSTRUCTION
from .tracing import PIXIE_SCORE_THRESHOLD, RerankSpan, TracedDocument, rerank_span

if TYPE_CHECKING:
    from .serving.client import RemoteScorer

__all__ = ["PixieRanker"]

# The class's public home in Haystack's integration namespace (installed with this package): pipelines saved with
# the ranker name this path, which Haystack's default deserialization allow-list trusts, and logging under it is
# covered by Haystack's logging setup (haystack.logging.configure_logging).
_HAYSTACK_MODULE = "haystack_integrations.components.rankers.pixie"
logger = logging.getLogger(_HAYSTACK_MODULE)
add_fallback_handler(logger)  # outside the package's logger: its warnings reach stderr the same way

# One lock for every ranker: warm_up may race with itself (Pipeline.run_async, run_async's lazy warm-up in a
# thread). Loads are serialized by the core's registry lock anyway, so a global lock costs nothing.
_WARM_UP_LOCK = threading.Lock()
# model_kwargs keys that name the weight dtype; the scorer takes the dtype as its own argument.
_DTYPE_KWARGS = ("dtype", "torch_dtype")
# The servers RemoteScorer speaks to (pixie_integrations.serving.remote_shapes.APIS; repeated so that init can check
# ``api`` without importing the serving extra).
_APIS = ("pixie", "vllm")
# Settings that only shape a locally loaded model: with api_base_url the server's own settings apply instead.
_LOCAL_ONLY = (
    "device",
    "dtype",
    "max_length",
    "batch_size",
    "token_budget",
    "model_kwargs",
    "tokenizer_kwargs",
    "config_kwargs",
)
# The type the reference ranker (sentence-transformers-haystack) saves; from_dict takes it as this class.
_REFERENCE_TYPE = (
    "haystack_integrations.components.rankers.sentence_transformers.sentence_transformers_similarity."
    "SentenceTransformersSimilarityRanker"
)
# The type pipelines saved before the class moved to Haystack's integration namespace carry; from_dict takes it.
LEGACY_TYPE = "pixie_integrations.haystack.PixieRanker"
# The reference ranker's `backend` values; the model runs on PyTorch (transformers) here.
_BACKENDS = ("torch",)


def _dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """A serializable name for a dtype; validates it early (an unknown name raises ``ValueError`` at init)."""
    if dtype is None or (isinstance(dtype, str) and dtype.lower().removeprefix("torch.") == "auto"):
        return None
    return str(resolve_dtype(dtype, torch.device("cpu"))).removeprefix("torch.")


def _split_dtype(dtype: str | None, model_kwargs: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    """Lift ``dtype``/``torch_dtype`` out of ``model_kwargs``.

    Haystack users write ``model_kwargs={"torch_dtype": torch.float16}`` (the reference ranker's docs). Passed
    through, transformers 5 silently ignores ``torch_dtype`` next to the core's own ``dtype`` argument, and a
    ``dtype`` key makes ``from_pretrained`` raise (a keyword given twice).
    """
    if not model_kwargs:
        return dtype, model_kwargs
    kwargs = dict(model_kwargs)
    for key in _DTYPE_KWARGS:
        if key not in kwargs:
            continue
        value = kwargs.pop(key)
        name = _dtype_name(value)
        if dtype is not None and name is not None and name != dtype:
            raise ValueError(f"dtype={dtype!r} and model_kwargs[{key!r}]={value!r} disagree; set only dtype.")
        dtype = dtype if dtype is not None else name
    return dtype, kwargs


def _instrumentor_span() -> Any:
    """The RERANKER span OpenInference's Haystack instrumentor opened around this ranker's run, when it is active.

    It recognises rankers by name and signature and wraps their ``run`` in a current span of its own, which holds the
    query and the documents; the rerank's ``pixie.*`` attributes go onto that span rather than a second one in it.
    """
    module = sys.modules.get("openinference.instrumentation.haystack")
    if module is None:
        return None
    try:
        if not module.HaystackInstrumentor().is_instrumented_by_opentelemetry:  # a singleton
            return None
        from opentelemetry import trace

        span = trace.get_current_span()
    except Exception:  # its internals may move: fall back to a span of our own
        logger.debug("Could not get the Haystack instrumentor's span", exc_info=True)
        return None
    return span if span.is_recording() else None


def _deduplicate(documents: list[Document]) -> list[Document]:
    """One document per id, in order of first appearance, before anything is scored (the reference ranker's rule).

    Among documents sharing an id the one with the higher *retrieval* score is kept (no score counts as lowest; on a
    tie the first one stays), so the same document survives as with ``SentenceTransformersSimilarityRanker``.
    """
    best: dict[str, Document] = {}
    for doc in documents:
        kept = best.get(doc.id)
        if kept is None or _retrieval_score(doc) > _retrieval_score(kept):
            best[doc.id] = doc
    return list(best.values())


def _retrieval_score(doc: Document) -> float:
    return doc.score if doc.score is not None else -math.inf


def _check_remote(
    api_base_url: str | None,
    api: str,
    api_key: Secret | None,
    *,
    local: dict[str, Any],
    trust_remote_code: bool,
) -> None:
    """Validate the remote-scoring settings at init, and refuse local-model settings that a server would ignore."""
    if api not in _APIS:
        raise ValueError(f"api must be one of {_APIS}, got {api!r}")
    if api_key is not None and not isinstance(api_key, Secret):
        raise TypeError(
            f"api_key must be a haystack Secret or None, not {type(api_key).__name__} "
            '(Secret.from_env_var("PIXIE_API_KEY") keeps the key out of saved pipelines)'
        )
    if api_base_url is None:
        if api != "pixie":
            raise ValueError(f"api={api!r} only applies with api_base_url; set api_base_url to the server's URL.")
        return
    if not isinstance(api_base_url, str) or not api_base_url.startswith(("http://", "https://")):
        raise ValueError(f"api_base_url must be an http:// or https:// URL, got {api_base_url!r}")
    ignored = [name for name in _LOCAL_ONLY if local[name] is not None]
    if trust_remote_code:
        ignored.append("trust_remote_code")
    if ignored:
        # The server loaded its model with its own settings: these would be silently ignored, so refuse them.
        raise ValueError(
            f"{', '.join(ignored)} only apply to a model loaded in this process; with api_base_url the server's "
            "settings apply (set them where the server is started)."
        )
    # Fail at init, not at the first run, when the client's dependencies are missing.
    from .serving.client import RemoteScorer  # noqa: F401


@component
class PixieRanker:
    """Reranks documents by relevance to the query with PIXIE-Spell-Reranker (or any Qwen3-Reranker / cross-encoder).

    Use it where you would use ``SentenceTransformersSimilarityRanker``: after a retriever, before a prompt builder.
    Scores are relevance probabilities in (0, 1), the numbers the model card prints (``scale_score=False``: logits).

    Usage example:
    ```python
    from haystack import Document
    from pixie_integrations.haystack import PixieRanker

    ranker = PixieRanker(top_k=3)
    ranker.warm_up()
    docs = [Document(content="Paris is in France"), Document(content="Berlin is in Germany")]
    result = ranker.run(query="City in Germany", documents=docs)
    best = result["documents"][0]  # the highest-scoring Document, with .score set
    ```

    ``run`` before ``warm_up`` loads the model lazily (a Pipeline calls ``warm_up`` for you). Instances asking for
    the same model, device and dtype share one copy of the weights, also with the LangChain and LlamaIndex adapters.

    With ``api_base_url="http://host:8000"`` the scores come from a server (``pixie-rerank serve``; vLLM with
    ``api="vllm"``) and no model is loaded in this process; ``run`` is otherwise the same.
    """

    __module__ = _HAYSTACK_MODULE  # the saved type: haystack_integrations.components.rankers.pixie.PixieRanker

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        device: ComponentDevice | None = None,
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),  # noqa: B008
        top_k: int = 10,
        instruction: str | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        query_prefix: str = "",
        query_suffix: str = "",
        document_prefix: str = "",
        document_suffix: str = "",
        scale_score: bool = True,
        score_threshold: float | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        token_budget: int | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: Literal["torch", "onnx", "openvino"] = "torch",
        api_base_url: str | None = None,
        api: str = "pixie",
        api_key: Secret | None = Secret.from_env_var("PIXIE_API_KEY", strict=False),  # noqa: B008
        long_documents: Literal["truncate", "chunk"] = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: Literal["max", "first", "mean"] | None = None,
        chunk_boundary: Literal["token", "sentence"] | None = None,
    ) -> None:
        """
        Create a PixieRanker. Nothing is loaded until :meth:`warm_up` (or the first :meth:`run`).

        :param model: Hugging Face Hub id or local folder of the reranker checkpoint. With ``api_base_url``: the
            served model's name, sent with every request (a server serving another name answers HTTP 404).
        :param device: The device to run on, e.g. ``ComponentDevice.from_str("cuda:0")``. ``None``: cuda, then mps,
            then cpu, chosen at warm-up (so a saved pipeline does not pin the machine it was saved on).
        :param token: Hugging Face token for private or gated checkpoints. Serialized as the names of its
            environment variables, never as a value.
        :param top_k: Most documents to return.
        :param instruction: The task instruction of the prompt template; it changes the scores, so describe your
            domain's task. ``None``: the model card's default instruction.
        :param meta_fields_to_embed: Meta fields whose values are scored with the content, before it.
        :param embedding_separator: Separator between the meta values and the content.
        :param query_prefix: Text added before the query. For a PIXIE / Qwen3-Reranker model it goes inside the
            prompt template (``<Query>: {query_prefix}{query}{query_suffix}``); for an encoder cross-encoder, before
            the query of the plain pair. The template itself is always built for you.
        :param query_suffix: Text added after the query, in the same place.
        :param document_prefix: Text added before each document's text (meta values and content), inside the
            template's ``<Document>:`` part for template models, before the document of the pair for encoders.
        :param document_suffix: Text added after each document's text, in the same place. Truncation cuts the end of
            the document part, so a long document may lose this suffix; the template is never cut.
        :param scale_score: ``True``: relevance probabilities (sigmoid, in float32). ``False``: raw logits.
        :param score_threshold: Return only documents whose score is at least this (on the scale chosen by
            ``scale_score``).
        :param dtype: Weight dtype, ``"float32"``, ``"bfloat16"`` or ``"float16"``. ``None``: bfloat16 on CUDA and
            on CPUs with bf16 matrix units, float32 elsewhere. ``"float32"`` reproduces the model card to 1e-5.
        :param max_length: Most tokens of one (query, document) input, template included; longer documents lose
            their end only. ``None``: the model's limit.
        :param batch_size: Most pairs per forward pass, on top of ``token_budget``. ``None``: no cap.
        :param token_budget: Most padded tokens per forward pass (bounds memory). ``None``: 16384 on CUDA, 8192 on
            MPS, 1024 on CPU.
        :param trust_remote_code: Allow checkpoints that ship their own modelling code.
        :param model_kwargs: Extra keyword arguments for the model's ``from_pretrained``. A ``torch_dtype`` or
            ``dtype`` here is taken as ``dtype``.
        :param tokenizer_kwargs: Extra keyword arguments for ``AutoTokenizer.from_pretrained``.
        :param config_kwargs: Extra keyword arguments for ``AutoConfig.from_pretrained`` (config attributes to
            override), as in the reference ranker.
        :param backend: Only ``"torch"``: the model runs on PyTorch through transformers. Accepted so that pipelines
            saved with the reference ranker (which always saves it) load; ``"onnx"`` and ``"openvino"`` are refused.
        :param api_base_url: Root URL of a scoring server, e.g. ``"http://127.0.0.1:8000"`` (without ``/v1``).
            Set: :meth:`warm_up` creates a :class:`~pixie_integrations.serving.RemoteScorer` instead of loading a
            model, and the server's own device, dtype and length limit apply. Needs the ``serve`` extra.
            ``None``: the model runs in this process.
        :param api: ``"pixie"`` for ``pixie-rerank serve``; ``"vllm"`` for vLLM serving a PIXIE-template reranker
            (the client then writes the prompt template). Only used with ``api_base_url``.
        :param api_key: Sent as ``Authorization: Bearer <key>`` to a server started with an API key; nothing is
            sent when it resolves to no value. Serialized as the names of its environment variables, never as a
            value. Only used with ``api_base_url``.
        :param long_documents: ``"truncate"`` cuts a document longer than ``max_length`` at its end (the model
            card's behaviour); ``"chunk"`` scores it in chunks and keeps the best (docs/long_documents.md). With
            chunking each output document's ``meta["pixie_chunk"]`` holds the winning chunk's span in the scored
            text (the content, when no prefix or meta fields are scored with it).
        :param chunk_tokens: With ``"chunk"``: document tokens per chunk; ``None`` fills what ``max_length`` leaves.
        :param chunk_overlap: With ``"chunk"``: tokens each chunk repeats from the one before; ``None`` is 0.
        :param max_chunks: With ``"chunk"``: most chunks scored per document (the rest are counted and logged).
        :param aggregate: With ``"chunk"``: ``"max"`` (the default), ``"first"`` or ``"mean"`` (of logits).
        :param chunk_boundary: With ``"chunk"``: ``"token"`` (the default) or ``"sentence"`` ends.
        :raises ValueError: If ``top_k``, ``batch_size`` or ``token_budget`` is not > 0, ``dtype`` or ``backend`` is
            unknown or unsupported,
            ``device`` is a multi-device map, ``api`` is unknown or ``api_base_url`` is not an http(s) URL, or
            ``api_base_url`` is combined with a setting that only applies to a local model (``device``, ``dtype``,
            ``max_length``, ``batch_size``, ``token_budget``, ``model_kwargs``, ``tokenizer_kwargs``,
            ``config_kwargs``, ``trust_remote_code=True``), or ``api`` is set without it.
        :raises ImportError: If ``api_base_url`` is set and the ``serve`` extra is not installed.
        """
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, but got {top_k}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be > 0 or None, but got {batch_size}")
        if token_budget is not None and token_budget <= 0:
            raise ValueError(f"token_budget must be > 0 or None, but got {token_budget}")
        if device is not None and not isinstance(device, ComponentDevice):
            raise ValueError(f"device must be a ComponentDevice or None, not {type(device).__name__}")
        if device is not None and device.has_multiple_devices:
            raise ValueError("PixieRanker runs on a single device; pass ComponentDevice.from_str(...), not a map.")
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str or None, not {type(instruction).__name__}")
        if backend not in _BACKENDS:
            raise ValueError(
                f"backend={backend!r} is not supported: PixieRanker runs the model on PyTorch through transformers, "
                f"so backend must be one of {_BACKENDS} (for speed see dtype, token_budget and api_base_url)."
            )
        affixes = {
            "query_prefix": query_prefix,
            "query_suffix": query_suffix,
            "document_prefix": document_prefix,
            "document_suffix": document_suffix,
        }
        for name, value in affixes.items():
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        _check_remote(
            api_base_url,
            api,
            api_key,
            local={
                "device": device,
                "dtype": dtype,
                "max_length": max_length,
                "batch_size": batch_size,
                "token_budget": token_budget,
                "model_kwargs": model_kwargs,
                "tokenizer_kwargs": tokenizer_kwargs,
                "config_kwargs": config_kwargs,
            },
            trust_remote_code=trust_remote_code,
        )

        self.model = os.fspath(model)
        self.device = device
        self.token = token
        self.top_k = top_k
        self.instruction = instruction
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.query_prefix = query_prefix
        self.query_suffix = query_suffix
        self.document_prefix = document_prefix
        self.document_suffix = document_suffix
        self.scale_score = scale_score
        self.score_threshold = score_threshold
        self.dtype = _dtype_name(dtype)
        self.max_length = max_length
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = model_kwargs
        self.tokenizer_kwargs = tokenizer_kwargs
        self.config_kwargs = config_kwargs
        self.backend = backend
        self.api_base_url = api_base_url
        self.api = api
        self.api_key = api_key
        self.long_documents = long_documents
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.max_chunks = max_chunks
        self.aggregate = aggregate
        self.chunk_boundary = chunk_boundary
        # One LongDocuments, checked now: a bad value or a chunk setting next to "truncate" fails at construction.
        self._long_documents: LongDocuments = resolve_long_documents(
            long_documents,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_chunks=max_chunks,
            aggregate=aggregate,
            chunk_boundary=chunk_boundary,
        )
        _split_dtype(self.dtype, model_kwargs)  # fail now, not at warm-up, on a dtype conflict
        self._scorer: PixieScorer | RemoteScorer | None = None

    @property
    def scorer(self) -> "PixieScorer | RemoteScorer | None":
        """The scorer once warmed up, ``None`` before; :meth:`get_scorer` warms up and never gives ``None``."""
        return self._scorer

    def get_scorer(self) -> "PixieScorer | RemoteScorer":
        """The scorer behind this ranker, warming up first if needed: use it to score outside the pipeline.

        The shared :class:`~pixie_integrations.PixieScorer`, or with ``api_base_url`` the
        :class:`~pixie_integrations.serving.RemoteScorer` that talks to the server.
        """
        scorer = self._scorer
        if scorer is None:
            self.warm_up()
            scorer = self._scorer
        assert scorer is not None  # warm_up always sets it
        return scorer

    def warm_up(self) -> None:
        """Load the model, once: later calls return at once (a Pipeline calls this at every run).

        With ``api_base_url`` it creates the :class:`~pixie_integrations.serving.RemoteScorer` instead and sends no
        request: a server that is down or refuses the key is reported by ``run`` as a
        :class:`~pixie_integrations.serving.RemoteScorerError`, so a pipeline can be built and warmed up before its
        server is.
        """
        if self._scorer is not None:
            return
        with _WARM_UP_LOCK:
            if self._scorer is not None:
                return
            if self.api_base_url is not None:
                self._scorer = self._remote_scorer()
                return
            dtype, model_kwargs = _split_dtype(self.dtype, self.model_kwargs)
            self._scorer = PixieScorer(
                self.model,
                # None lets the core pick, exactly as the other adapters do, so they share one copy of the weights.
                device=self.device.to_torch_str() if self.device is not None else None,
                dtype=dtype,
                max_length=self.max_length,
                instruction=self.instruction if self.instruction is not None else DEFAULT_INSTRUCTION,
                token=self.token.resolve_value() if self.token is not None else None,
                trust_remote_code=self.trust_remote_code,
                token_budget=self.token_budget,
                batch_size=self.batch_size,
                model_kwargs=model_kwargs,
                tokenizer_kwargs=self.tokenizer_kwargs,
                config_kwargs=self.config_kwargs,
            )

    async def warm_up_async(self) -> None:
        """Like :meth:`warm_up`, loading in a worker thread so that ``Pipeline.run_async`` keeps its loop free."""
        if self._scorer is None:
            await asyncio.to_thread(self.warm_up)

    def close(self) -> None:
        """Close a remote scorer's connections (``Pipeline.close`` calls this); the next run reconnects.

        A local model is left loaded: its weights are shared with every other ranker and adapter in the process.
        """
        with _WARM_UP_LOCK:
            scorer = self._scorer
            if self.api_base_url is None or scorer is None:
                return
            self._scorer = None
        scorer.close()  # type: ignore[union-attr]

    def _remote_scorer(self) -> "RemoteScorer":
        from .serving.client import RemoteScorer

        key = self.api_key.resolve_value() if self.api_key is not None else None
        assert self.api_base_url is not None
        return RemoteScorer(
            self.api_base_url,
            api=self.api,  # type: ignore[arg-type]  # checked at init
            model=self.model,
            instruction=self.instruction if self.instruction is not None else DEFAULT_INSTRUCTION,
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Serialize the component's init parameters (the token and API key as environment-variable names only)."""
        model_kwargs = copy.deepcopy(self.model_kwargs)  # serialize a copy: the live kwargs keep their torch dtypes
        if model_kwargs is not None:
            serialize_hf_model_kwargs(model_kwargs)
        return default_to_dict(
            self,
            model=self.model,
            device=self.device,
            token=self.token,
            top_k=self.top_k,
            instruction=self.instruction,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            query_prefix=self.query_prefix,
            query_suffix=self.query_suffix,
            document_prefix=self.document_prefix,
            document_suffix=self.document_suffix,
            scale_score=self.scale_score,
            score_threshold=self.score_threshold,
            dtype=self.dtype,
            max_length=self.max_length,
            batch_size=self.batch_size,
            token_budget=self.token_budget,
            trust_remote_code=self.trust_remote_code,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=self.tokenizer_kwargs,
            config_kwargs=self.config_kwargs,
            backend=self.backend,
            api_base_url=self.api_base_url,
            api=self.api,
            api_key=self.api_key,
            long_documents=self.long_documents,
            chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap,
            max_chunks=self.max_chunks,
            aggregate=self.aggregate,
            chunk_boundary=self.chunk_boundary,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PixieRanker":
        """Rebuild the component from :meth:`to_dict`'s output, or from a dict ``SentenceTransformersSimilarityRanker``
        saved (its type is taken as this class's). The caller's dict is left unchanged."""
        if data.get("type") in (_REFERENCE_TYPE, LEGACY_TYPE):
            data = {**data, "type": generate_qualified_class_name(cls)}
        params = dict(data.get("init_parameters", {}))
        if params.get("model_kwargs") is not None:
            params["model_kwargs"] = copy.deepcopy(params["model_kwargs"])
            deserialize_hf_model_kwargs(params["model_kwargs"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
        long_documents: Literal["truncate", "chunk"] | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: Literal["max", "first", "mean"] | None = None,
        chunk_boundary: Literal["token", "sentence"] | None = None,
    ) -> dict[str, list[Document]]:
        """
        Rank documents by relevance to the query, best first.

        Documents sharing an id are collapsed to one before scoring: the one with the higher retrieval score stays,
        as in the reference ranker. The text scored is ``document_prefix``, the values of ``meta_fields_to_embed``
        and the content joined by ``embedding_separator``, then ``document_suffix``; the query is ``query_prefix``,
        the query, ``query_suffix``. The caller's documents are not modified: the output holds copies with the new
        ``score``.

        :param query: The query to rank the documents against.
        :param documents: The documents to rank; an empty list gives an empty list (whatever the other arguments).
        :param top_k: Most documents to return. Overrides the init value when not ``None``.
        :param scale_score: ``True``: probabilities; ``False``: logits. Overrides the init value when not ``None``.
        :param score_threshold: Keep only scores >= this. Overrides the init value when not ``None``.
        :param long_documents: ``"truncate"`` or ``"chunk"`` for this run; the other chunk settings
            (``chunk_tokens``, ``chunk_overlap``, ``max_chunks``, ``aggregate``, ``chunk_boundary``) likewise. Each
            overrides the init value when not ``None``.
        :returns: ``{"documents": [...]}``, sorted by descending score (ties keep input order), threshold
            applied, then cut to ``top_k``.
        :raises ValueError: If ``top_k`` is not > 0.
        """
        if not documents:
            return {"documents": []}  # before checking top_k, as the reference ranker does
        top_k, scale_score, score_threshold = self._resolve(top_k, scale_score, score_threshold)
        chunking = self._chunking(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        candidates, query_text, texts = self._prepare(query, documents)
        if self._scorer is None:
            self._log_lazy_warm_up()
        scorer = self.get_scorer()
        # The OpenInference span, a child of the current one (Haystack's component span with its OpenTelemetry
        # tracer); the scorer's work is added to it rather than opening a second span.
        with self._rerank_span() as span:
            self._trace_request(span, query_text, documents, top_k, score_threshold)
            unique = list(dict.fromkeys(texts))  # identical texts (under different ids) are scored once
            scores, chunks = score_documents(scorer, query_text, unique, raw=not scale_score, long_documents=chunking)
            ranked = self._select(candidates, texts, unique, scores, top_k, score_threshold, chunks)
            self._trace_result(span, documents, candidates, ranked)
        return {"documents": ranked}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
        long_documents: Literal["truncate", "chunk"] | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: Literal["max", "first", "mean"] | None = None,
        chunk_boundary: Literal["token", "sentence"] | None = None,
    ) -> dict[str, list[Document]]:
        """
        Asynchronous :meth:`run`: same parameters and result, and the event loop stays free.

        A scorer with an ``ascore`` coroutine method is awaited; otherwise the scoring runs in a worker thread. A
        lazy warm-up (the model load) also runs in a worker thread.
        """
        if not documents:
            return {"documents": []}
        top_k, scale_score, score_threshold = self._resolve(top_k, scale_score, score_threshold)
        chunking = self._chunking(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        candidates, query_text, texts = self._prepare(query, documents)
        if self._scorer is None:
            self._log_lazy_warm_up()
            await self.warm_up_async()
        scorer = self.get_scorer()
        with self._rerank_span() as span:
            self._trace_request(span, query_text, documents, top_k, score_threshold)
            unique = list(dict.fromkeys(texts))
            scores, chunks = await ascore_documents(
                scorer, query_text, unique, raw=not scale_score, long_documents=chunking
            )
            ranked = self._select(candidates, texts, unique, scores, top_k, score_threshold, chunks)
            self._trace_result(span, documents, candidates, ranked)
        return {"documents": ranked}

    # -- internals -------------------------------------------------------------------------------------------------
    def _resolve(
        self, top_k: int | None, scale_score: bool | None, score_threshold: float | None
    ) -> tuple[int, bool, float | None]:
        # `is not None`, never `or`: run(scale_score=False) and run(score_threshold=0.0) must take effect.
        top_k = top_k if top_k is not None else self.top_k
        scale_score = scale_score if scale_score is not None else self.scale_score
        score_threshold = score_threshold if score_threshold is not None else self.score_threshold
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, but got {top_k}")
        return top_k, scale_score, score_threshold

    def _chunking(
        self,
        long_documents: str | None,
        chunk_tokens: int | None,
        chunk_overlap: int | None,
        max_chunks: int | None,
        aggregate: str | None,
        chunk_boundary: str | None,
    ) -> LongDocuments:
        """A run's long-document settings: each one given overrides the init value (``None`` keeps it)."""
        return resolve_long_documents(
            long_documents,
            default=self._long_documents,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_chunks=max_chunks,
            aggregate=aggregate,
            chunk_boundary=chunk_boundary,
        )

    def _prepare(self, query: str, documents: list[Document]) -> tuple[list[Document], str, list[str]]:
        """The documents left after collapsing ids, the query text and each document's text, as scored."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a haystack Document, not {type(doc).__name__}")
        candidates = _deduplicate(documents)
        texts = [self.document_prefix + self._text(doc) + self.document_suffix for doc in candidates]
        return candidates, self.query_prefix + query + self.query_suffix, texts

    def _text(self, doc: Document) -> str:
        # The reference ranker's rule: missing and None meta values are skipped; "", 0 and False are real values.
        meta = [str(doc.meta[key]) for key in self.meta_fields_to_embed if doc.meta.get(key) is not None]
        return self.embedding_separator.join([*meta, doc.content or ""])

    @staticmethod
    def _rerank_span() -> Any:
        # Haystack keeps content out of traces unless HAYSTACK_CONTENT_TRACING_ENABLED=true: so does this span,
        # unless the code's TraceConfig says otherwise.
        return rerank_span(
            "PixieRanker",
            entry_point="haystack",
            merge_into=_instrumentor_span(),
            hide_by_default=not haystack_tracer.is_content_tracing_enabled,
        )

    def _traced(self, doc: Document, score: float | None) -> TracedDocument:
        """A document as the trace records it: the text that was scored, its id and meta."""
        text = self.document_prefix + self._text(doc) + self.document_suffix
        return TracedDocument(text, id=doc.id, score=score, metadata=doc.meta or None)

    def _trace_request(
        self, span: RerankSpan, query_text: str, documents: list[Document], top_k: int, score_threshold: float | None
    ) -> None:
        if not span.recording:
            return
        scorer = self._scorer
        instruction = self.instruction if self.instruction is not None else getattr(scorer, "instruction", None)
        span.request(
            query=query_text,
            model_name=self.model,
            top_k=top_k,
            instruction=instruction,
            documents=[self._traced(doc, doc.score) for doc in documents],  # with their retrieval scores
        )
        span.set(PIXIE_SCORE_THRESHOLD, score_threshold)

    def _trace_result(
        self, span: RerankSpan, documents: list[Document], candidates: list[Document], ranked: list[Document]
    ) -> None:
        if not span.recording:
            return
        positions = {id(doc): i for i, doc in enumerate(documents)}
        # After collapsing, one candidate per id: an output document's position is its candidate's.
        by_id = {doc.id: positions[id(doc)] for doc in candidates}
        span.result((self._traced(doc, doc.score) for doc in ranked), indices=[by_id[doc.id] for doc in ranked])

    def _log_lazy_warm_up(self) -> None:
        if self.api_base_url is None:
            logger.info("PixieRanker.run called before warm_up(); loading %s now.", self.model)
        else:
            logger.info("PixieRanker.run called before warm_up(); connecting to %s now.", self.api_base_url)

    @staticmethod
    def _select(
        candidates: list[Document],
        texts: list[str],
        unique: list[str],
        scores: list[float],
        top_k: int,
        score_threshold: float | None,
        chunks: list[ChunkSpan | None] | None = None,
    ) -> list[Document]:
        if len(scores) != len(unique):  # a scorer bug must not silently drop or misalign documents
            raise RuntimeError(f"The scorer returned {len(scores)} scores for {len(unique)} texts.")
        by_text = dict(zip(unique, scores, strict=True))
        chunk_of = dict(zip(unique, chunks, strict=True)) if chunks is not None else {}
        ranked = sorted(zip((by_text[t] for t in texts), texts, candidates), key=lambda item: -item[0])  # stable
        if score_threshold is not None:
            ranked = [item for item in ranked if item[0] >= score_threshold]
        out = []
        for score, text, doc in ranked[:top_k]:
            chunk = chunk_of.get(text)
            if chunk is None:
                out.append(dataclasses.replace(doc, score=float(score)))
            else:  # a new meta dict (deep-copied): the caller's document is left as it was
                meta = {**copy.deepcopy(doc.meta), CHUNK_METADATA_KEY: chunk.to_dict()}
                out.append(dataclasses.replace(doc, score=float(score), meta=meta))
        return out


def _load_legacy_type() -> None:
    """Let pipelines saved under :data:`LEGACY_TYPE` load: Haystack finds a saved type in its component registry,
    and only imports a module its allow-list trusts.

    The registry gets the old name too. The allow-list gets this module, which defines no other component or class,
    so that such pipelines load with Haystack's default allow-list in any process that imported the ranker; a
    process that did not needs ``allowed_modules=["pixie_integrations"]`` (or ``HAYSTACK_DESERIALIZATION_ALLOWLIST``).
    """
    component.registry.setdefault(LEGACY_TYPE, PixieRanker)
    try:
        from haystack.core.serialization import allow_deserialization_module
    except ImportError:  # a Haystack from before the allow-list: every module loads
        return
    allow_deserialization_module(__name__)


_load_legacy_type()
