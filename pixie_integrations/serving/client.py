"""``RemoteScorer``: ``PixieScorer``'s scoring API, answered by a server.

Four servers are spoken to, each only for the models it scores exactly as the model card's code does:

- ``api="pixie"``: ``pixie-rerank serve`` or its Ray Serve deployment (``pixie_integrations.ray``); the server applies
  the template. Any family.
- ``api="vllm"``: ``vllm serve <model> --runner pooling``, its ``/score`` (default) or ``/v1/rerank``. vLLM does not
  know PIXIE's prompt template, so for PIXIE and Qwen3-Reranker this client writes text A and text B itself with
  :func:`~pixie_integrations.template.format_query` / :func:`~pixie_integrations.template.format_document`; vLLM
  concatenates and scores them: the same tokens, so the same numbers, as the local scorer. It never asks vLLM to
  truncate (vLLM cuts from the end, which is the template's suffix); give ``max_length`` (and the ``tokenizer``) to
  cut long documents here instead, inside text B, as the local scorer does. Encoder cross-encoders
  (``family="encoder"``) are sent as plain (query, document) pairs, which vLLM tokenizes as a pair.
- ``api="tei"``: Hugging Face text-embeddings-inference ``/rerank``, for encoder cross-encoders (bge-reranker family).
- ``api="infinity"``: Infinity ``/rerank``, for encoder cross-encoders.

PIXIE-style template models are refused on TEI and Infinity (a ``ValueError`` when the scorer is built): TEI does not
serve Qwen3 sequence classifiers on ``/rerank`` and truncates from the end of the pair, and Infinity strips leading and
trailing whitespace from every document, which deletes the newlines that end the template's suffix: either way the
score would be read from other tokens than the model card's.

Long calls are split into requests of at most ``max_documents_per_request`` documents, sent ``max_concurrency`` at a
time; 429 and 503 answers and connection failures are retried with exponential backoff (honouring ``Retry-After``).
``score`` / ``score_pairs`` / ``rank`` block; ``ascore`` / ``ascore_pairs`` / ``arank`` are native asyncio (one
``httpx.AsyncClient``). Either way the results are what ``PixieScorer`` returns: Python floats in input order,
``RankResult`` from ``rank``.

``api="vllm"`` pointed at this project's own server is refused (a :class:`RemoteScorerError` naming ``api="pixie"``):
that server applies the template itself, so the client's would be applied twice.

This module holds the scorer; the rest lives beside it: :mod:`.remote_calls` (which requests one call makes),
:mod:`.remote_shapes` (each API's requests and answers),
:mod:`.remote_transport` (connections, retries, errors), :mod:`.remote_errors` (:class:`RemoteScorerError`) and
:mod:`.engines` (what each engine does to the text).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ..chunking import resolve_long_documents
from ..families import ModelFamily
from ..ranking import ChunkSpan, RankResult, check_top_n, rank_by_score
from ..template import DEFAULT_INSTRUCTION
from ..validation import check_documents, check_pairs, check_query
from .engines import PIXIE_OWNER, VLLM_ON_PIXIE, engine_family, served_by_pixie
from .remote_calls import CallPlanner
from .remote_errors import RemoteScorerError, unexpected_answer
from .remote_shapes import APIS, DEFAULT_DOCUMENT_CAP, VLLM_ROUTES, Api, Call, place_scores
from .remote_transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Self


__all__ = ["RemoteScorer", "RemoteScorerError"]

logger = logging.getLogger(__name__)


class RemoteScorer:
    """Scores (query, document) pairs on a server, with the same calls and results as ``PixieScorer``.

    Thread-safe (one pooled ``httpx.Client``; the async methods share one ``httpx.AsyncClient`` per event loop). Use
    it as a (async) context manager or call :meth:`close` / :meth:`aclose` to release the connections. Copies and
    pickles open their own connections.

    Args:
        base_url: The server's root, e.g. ``"http://127.0.0.1:8000"`` (no ``/v1``).
        api: ``"pixie"`` (``pixie-rerank serve``, Ray Serve), ``"vllm"``, ``"tei"`` or ``"infinity"``.
        model: The served model's name. ``None``: asked from the server (``/v1/models``; TEI's ``/info``) the first
            time :attr:`model_name` is read (adapters read it when they are built, so give it to build them while
            the server is down).
        instruction: The task instruction used when a call gives none; it is always sent (or applied here), so the
            server's own default never applies. Encoder cross-encoders take none.
        family: What the served model is (a :class:`~pixie_integrations.ModelFamily` or its value). ``None``: a
            template model (PIXIE, Qwen3-Reranker) for ``"vllm"``, an encoder cross-encoder for ``"tei"`` and
            ``"infinity"``; the pixie server knows its own. A template family on TEI or Infinity is refused.
        tokenizer: Hub id or folder of the served model's tokenizer, for ``max_length`` with ``api="vllm"``
            (default: ``model``). Only the tokenizer is loaded (needs ``transformers``).
        max_length: Most tokens of one whole input, template included (``api="vllm"``, template models): longer
            documents are cut here, inside text B, so the suffix survives, as the local scorer cuts them. ``None``:
            documents are sent whole, and vLLM refuses inputs above its ``max_model_len``.
        vllm_route: ``"score"`` (``/score``, text_1/text_2) or ``"rerank"`` (``/v1/rerank``) with ``api="vllm"``.
        max_documents_per_request: Most documents in one request; longer calls are split. ``None``: 128 (TEI: 32,
            its default ``--max-client-batch-size``; Infinity: 256).
        max_concurrency: Requests of one call in flight at once.
        retries: Further tries after a 429, a 503 or a failed connection, with exponential backoff (a server's
            ``Retry-After`` is honoured up to 60 s). ``0``: none.
        backoff: Seconds before the first retry; each further one waits about twice as long (with jitter).
        timeout: Seconds to wait for connecting and for each answer; ``None`` waits forever.
        headers: Extra HTTP headers, e.g. ``{"Authorization": "Bearer <key>"}`` for a server started with an API key.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api: Api = "pixie",
        model: str | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        family: ModelFamily | str | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        vllm_route: Literal["score", "rerank"] = "score",
        max_documents_per_request: int | None = None,
        max_concurrency: int = 4,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float | None = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {api!r}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a str or None, not {type(model).__name__}")
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, not {type(instruction).__name__}")
        if vllm_route not in VLLM_ROUTES:
            raise ValueError(f"vllm_route must be one of {VLLM_ROUTES}, got {vllm_route!r}")
        for name, value in (("max_documents_per_request", max_documents_per_request), ("max_length", max_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency <= 0:
            raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0, got {backoff}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.api: Api = api
        self.instruction = instruction
        self.family = engine_family(api, family, model)
        self._family_given = family is not None
        self._family_arg = None if family is None else self.family.value
        if max_length is not None and (api != "vllm" or not self.family.uses_template):
            raise ValueError(
                "max_length cuts documents on the client for template models on vLLM (api='vllm'); the pixie server "
                "cuts them itself (its max_length), TEI and Infinity cut encoder inputs themselves"
            )
        if tokenizer is not None and max_length is None:
            raise ValueError("tokenizer= is only used to cut documents to max_length: give max_length too")
        self.max_length = max_length
        self.vllm_route: Literal["score", "rerank"] = vllm_route
        self.max_documents_per_request = max_documents_per_request or DEFAULT_DOCUMENT_CAP[api]
        self.max_concurrency = max_concurrency
        self._tokenizer_name = tokenizer
        self._headers = dict(headers or {})
        self._model = model
        self._lock = threading.Lock()
        self._planner = CallPlanner(self)
        self._transport = Transport(
            self.base_url,
            timeout=timeout,
            headers=self._headers,
            retries=retries,
            backoff=backoff,
            logger=logger,
            check=self._refuse_pixie_server if api == "vllm" else None,
        )

    # -- connection settings ---------------------------------------------------------------------------------------
    @property
    def retries(self) -> int:
        """Further tries after a 429, a 503 or a failed connection."""
        return self._transport.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._transport.retries = value

    @property
    def backoff(self) -> float:
        """Seconds before the first retry."""
        return self._transport.backoff

    @backoff.setter
    def backoff(self, value: float) -> None:
        self._transport.backoff = value

    @property
    def timeout(self) -> float | None:
        """Seconds to wait for connecting and for each answer (fixed when the scorer is built)."""
        return self._transport.timeout

    @property
    def _client(self) -> httpx.Client:
        return self._transport.client

    # -- what is served --------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The served model's name: ``model`` if given, else what the server reports."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._discover_model()
        return self._model

    @property
    def known_model_name(self) -> str | None:
        """The served model's name if it was given or has been asked already, else ``None`` (asks nothing)."""
        return self._model

    @property
    def tokenizer_name(self) -> str | None:
        """The ``tokenizer`` given (for ``max_length`` with ``api="vllm"``), else ``None``."""
        return self._tokenizer_name

    def __repr__(self) -> str:
        return f"RemoteScorer({self.base_url!r}, api={self.api!r}, model={self._model!r})"

    # -- scoring ---------------------------------------------------------------------------------------------------
    # The long-document keywords (long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
    # mean what they mean for PixieScorer; with "chunk" they are sent to the server, which chunks (api="pixie" only).
    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        **long_documents: Any,
    ) -> list[float]:
        """Score each document against one query: one Python float per document, in input order.

        Args:
            query: The search query.
            documents: Document texts; an empty list gives ``[]`` without a request.
            instruction: Task instruction for this call; ``None`` uses :attr:`instruction`.
            raw: Return the logit instead of the probability. With ``api="vllm"`` it is computed here from the
                probability vLLM returns (``log p - log(1 - p)``): as exact as that float, infinite where it is 0 or 1.
            **long_documents: ``long_documents="chunk"`` and the chunk settings, as for ``PixieScorer.score``
                (docs/long_documents.md); the server chunks. Only with ``api="pixie"``.
        """
        check_query(query)
        docs = check_documents(documents)
        chunking = self._chunking(long_documents)
        return self._scores(
            self._run(self._planner.calls([query], docs, self._instruction(instruction), raw, chunking), len(docs)),
            chunking,
        )[0]

    def score_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        **long_documents: Any,
    ) -> list[float]:
        """Score (query, document) pairs whose queries differ. Same arguments and return as :meth:`score`."""
        checked = check_pairs(pairs)
        chunking = self._chunking(long_documents)
        calls = self._planner.calls(
            [q for q, _ in checked], [d for _, d in checked], self._instruction(instruction), raw, chunking
        )
        return self._scores(self._run(calls, len(checked)), chunking)[0]

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
        **long_documents: Any,
    ) -> list[RankResult]:
        """Rank documents by relevance to the query, best first (ties keep input order), as ``PixieScorer.rank``;
        with chunking each result's ``chunk`` is the winning chunk the server reports."""
        check_top_n(top_n)  # before any request
        check_query(query)
        docs = check_documents(documents)
        chunking = self._chunking(long_documents)
        values = self._run(self._planner.calls([query], docs, self._instruction(instruction), raw, chunking), len(docs))
        scores, chunks = self._scores(values, chunking)
        return rank_by_score(scores, docs, top_n, chunks)

    async def ascore(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        **long_documents: Any,
    ) -> list[float]:
        """:meth:`score` on asyncio: the requests are awaited, no thread is held."""
        check_query(query)
        docs = check_documents(documents)
        chunking = self._chunking(long_documents)
        calls = self._planner.calls([query], docs, self._instruction(instruction), raw, chunking)
        return self._scores(await self._arun(calls, len(docs)), chunking)[0]

    async def ascore_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        **long_documents: Any,
    ) -> list[float]:
        """:meth:`score_pairs` on asyncio."""
        checked = check_pairs(pairs)
        chunking = self._chunking(long_documents)
        calls = self._planner.calls(
            [q for q, _ in checked], [d for _, d in checked], self._instruction(instruction), raw, chunking
        )
        return self._scores(await self._arun(calls, len(checked)), chunking)[0]

    async def arank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
        **long_documents: Any,
    ) -> list[RankResult]:
        """:meth:`rank` on asyncio."""
        check_top_n(top_n)
        check_query(query)
        docs = check_documents(documents)
        chunking = self._chunking(long_documents)
        values = await self._arun(
            self._planner.calls([query], docs, self._instruction(instruction), raw, chunking), len(docs)
        )
        scores, chunks = self._scores(values, chunking)
        return rank_by_score(scores, docs, top_n, chunks)

    def _chunking(self, keywords: dict[str, Any]) -> dict[str, Any] | None:
        """The long-document fields to send (``None``: truncate, nothing sent); a clear error where they cannot go."""
        settings = resolve_long_documents(keywords.pop("long_documents", None), **keywords)
        if not settings.chunked:
            return None
        if self.api != "pixie":
            raise ValueError(
                f"long_documents='chunk' needs a pixie-rerank server (api='pixie'); {self.api} scores each input as "
                "it is sent: chunk with a local PixieScorer, or truncate"
            )
        fields = settings.to_dict()
        fields["long_documents"] = fields.pop("strategy")
        return fields

    @staticmethod
    def _scores(values: list[Any], chunking: dict[str, Any] | None) -> tuple[list[float], list[ChunkSpan] | None]:
        if chunking is None:
            return values, None
        return [score for score, _ in values], [span for _, span in values]

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pooled connections; this scorer cannot send requests afterwards (make a new one)."""
        self._transport.close()

    async def aclose(self) -> None:
        """Close the connections, the async ones from inside the running event loop."""
        await self._transport.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getstate__(self) -> dict[str, Any]:
        # The settings, not the connection pools: a copy (deepcopy in a framework, a pickle to a worker) reconnects.
        return {
            "base_url": self.base_url,
            "api": self.api,
            "model": self._model,
            "instruction": self.instruction,
            "family": self._family_arg,
            "tokenizer": self._tokenizer_name,
            "max_length": self.max_length,
            "vllm_route": self.vllm_route,
            "max_documents_per_request": self.max_documents_per_request,
            "max_concurrency": self.max_concurrency,
            "retries": self.retries,
            "backoff": self.backoff,
            "timeout": self.timeout,
            "headers": self._headers,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        settings = dict(state)
        self.__init__(settings.pop("base_url"), **settings)  # type: ignore[misc]

    # -- the requests of one call ----------------------------------------------------------------------------------
    def _instruction(self, instruction: str | None) -> str:
        if instruction is None:
            return self.instruction
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str or None, not {type(instruction).__name__}")
        return instruction

    # -- sending ---------------------------------------------------------------------------------------------------
    def _run(self, calls: list[Call], count: int) -> list[float]:
        if not calls:
            return []
        if len(calls) == 1 or self.max_concurrency == 1:
            answers = [self._post_call(c) for c in calls]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(calls))) as pool:
                answers = list(pool.map(self._post_call, calls))
        return place_scores(calls, answers, count)

    async def _arun(self, calls: list[Call], count: int) -> list[float]:
        if not calls:
            return []
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(call: Call) -> list[float]:
            async with limit:
                return await self._apost_call(call)

        answers = await asyncio.gather(*(one(c) for c in calls))
        return place_scores(calls, list(answers), count)

    def _post_call(self, call: Call) -> list[float]:
        return call.parse(self._request("POST", call.path, call.payload), self.base_url + call.path)

    async def _apost_call(self, call: Call) -> list[float]:
        body = await self._transport.arequest("POST", call.path, call.payload)
        return call.parse(body, self.base_url + call.path)

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        """One request with retries; the decoded JSON answer."""
        return self._transport.request(method, path, payload)

    def _refuse_pixie_server(self, url: str, response: httpx.Response) -> None:
        """With ``api="vllm"``: this project's own server applies the template itself, so the client's would be
        applied twice (scores off by a few hundredths, rankings changed): refuse its first answer."""
        if served_by_pixie(response.headers):
            raise RemoteScorerError(VLLM_ON_PIXIE.format(url=self.base_url), url=url)

    def _discover_model(self) -> str:
        if self.api == "tei":
            body = self._request("GET", "/info", None)
            if not isinstance(body, dict) or not body.get("model_id"):
                raise unexpected_answer(
                    self.base_url + "/info", "expected {'model_id': ...}; pass model= to RemoteScorer"
                )
            if not self._family_given:
                engine_family(self.api, None, str(body["model_id"]))
            return str(body["model_id"])
        body = self._request("GET", "/v1/models" if self.api != "infinity" else "/models", None)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) or not data[0].get("id"):
            raise unexpected_answer(
                self.base_url + "/v1/models", "expected {'data': [{'id': ...}]}; pass model= to RemoteScorer"
            )
        if self.api == "vllm" and any(isinstance(d, dict) and d.get("owned_by") == PIXIE_OWNER for d in data):
            raise RemoteScorerError(VLLM_ON_PIXIE.format(url=self.base_url), url=self.base_url + "/v1/models")
        if len(data) > 1:
            logger.warning("%s serves several models; using %r (pass model= to choose)", self.base_url, data[0]["id"])
        name = str(data[0]["id"])
        if not self._family_given:
            engine_family(self.api, None, name)  # an Infinity serving a template model is refused here
        return name
