"""``RemoteScorer``: ``PixieScorer``'s scoring API, answered by a server.

Two servers are spoken to:

- ``api="pixie"``: ``pixie-rerank serve`` (:mod:`pixie_integrations.serving.server`); the server applies the template.
- ``api="vllm"``: ``vllm serve <PIXIE or Qwen3 seq-cls reranker> --runner pooling``. vLLM does not know PIXIE's
  prompt template, so this client writes text A and text B itself with
  :func:`~pixie_integrations.template.format_query` / :func:`~pixie_integrations.template.format_document` and
  posts them to vLLM's ``/score``, which concatenates and scores them: the same tokens, and so the same numbers, as
  the local scorer. It never asks vLLM to truncate: vLLM cuts from the end, which is the template's suffix, and the
  score would be read at the wrong token. An input longer than the server's ``max_model_len`` is refused by vLLM
  (an error naming the length), never silently cut; keep documents within it, or shorten them yourself.

Either way the results are what ``PixieScorer`` returns: Python floats in input order, ``RankResult`` from ``rank``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx

from .. import __version__
from ..ranking import RankResult, check_top_n, rank_by_score
from ..template import DEFAULT_INSTRUCTION, format_document, format_query
from ..validation import check_documents, check_pairs, check_query

if TYPE_CHECKING:
    from typing_extensions import Self


__all__ = ["RemoteScorer", "RemoteScorerError"]

logger = logging.getLogger(__name__)

Api = Literal["pixie", "vllm"]
_APIS = ("pixie", "vllm")


class RemoteScorerError(RuntimeError):
    """A scoring server could not be reached or refused a request; ``url`` and ``status_code`` say which and how."""

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        """The URL that was requested."""
        self.status_code = status_code
        """The HTTP status the server answered with; ``None`` when no answer came."""


class RemoteScorer:
    """Scores (query, document) pairs on a server, with the same calls and results as ``PixieScorer``.

    Thread-safe (one pooled ``httpx.Client``); use it as a context manager or call :meth:`close` to release the
    connections. Copies and pickles open their own connections.

    Args:
        base_url: The server's root, e.g. ``"http://127.0.0.1:8000"`` (no ``/v1``).
        api: ``"pixie"`` for ``pixie-rerank serve``; ``"vllm"`` for a vLLM server running a PIXIE-template reranker
            (PIXIE itself, or a seq-cls conversion of Qwen3-Reranker), whose prompt this client formats.
        model: The served model's name. ``None``: asked from the server's ``/v1/models`` the first time
            :attr:`model_name` is read (adapters read it when they are built, so give it to build them while the
            server is down).
        instruction: The task instruction used when a call gives none; it is always sent, so the server's own
            default never applies.
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
        timeout: float | None = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if api not in _APIS:
            raise ValueError(f"api must be one of {_APIS}, got {api!r}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a str or None, not {type(model).__name__}")
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, not {type(instruction).__name__}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.api: Api = api
        self.instruction = instruction
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._model = model
        self._model_lock = threading.Lock()
        self._client = httpx.Client(
            timeout=timeout, headers={"User-Agent": f"pixie-integrations/{__version__}", **self._headers}
        )

    # -- what is served --------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The served model's name: ``model`` if given, else the first model the server's ``/v1/models`` lists."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._discover_model()
        return self._model

    def __repr__(self) -> str:
        return f"RemoteScorer({self.base_url!r}, api={self.api!r}, model={self._model!r})"

    # -- scoring ---------------------------------------------------------------------------------------------------
    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> list[float]:
        """Score each document against one query: one Python float per document, in input order.

        Args:
            query: The search query.
            documents: Document texts; an empty list gives ``[]`` without a request.
            instruction: Task instruction for this call; ``None`` uses :attr:`instruction`.
            raw: Return the logit instead of the probability. With ``api="vllm"`` it is computed here from the
                probability vLLM returns (``log p - log(1 - p)``): as exact as that float, infinite where it is 0 or 1.
        """
        check_query(query)
        docs = check_documents(documents)
        if not docs:
            return []
        instr = self._instruction(instruction)
        if self.api == "pixie":
            return self._pixie_score(query, docs, instr, raw)
        # One text A against many text Bs (vLLM's 1:N form): the prompt prefix is sent once.
        return self._vllm_score(format_query(query, instr), [format_document(d) for d in docs], len(docs), raw)

    def score_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
    ) -> list[float]:
        """Score (query, document) pairs whose queries differ. Same return as :meth:`score`, in pair order."""
        checked = check_pairs(pairs)
        if not checked:
            return []
        instr = self._instruction(instruction)
        queries = [q for q, _ in checked]
        documents = [d for _, d in checked]
        if self.api == "pixie":
            return self._pixie_score(queries, documents, instr, raw)
        return self._vllm_score(
            [format_query(q, instr) for q in queries], [format_document(d) for d in documents], len(checked), raw
        )

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
    ) -> list[RankResult]:
        """Rank documents by relevance to the query, best first (ties keep input order), as ``PixieScorer.rank``."""
        check_top_n(top_n)  # before any request
        scores = self.score(query, documents, instruction=instruction, raw=raw)
        return rank_by_score(scores, documents, top_n)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pooled connections; this scorer cannot send requests afterwards (make a new one)."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # The settings, not the connection pool: a copy (deepcopy in a framework, a pickle to a worker) reconnects.
        return {
            "base_url": self.base_url,
            "api": self.api,
            "model": self._model,
            "instruction": self.instruction,
            "timeout": self.timeout,
            "headers": self._headers,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        settings = dict(state)
        self.__init__(settings.pop("base_url"), **settings)  # type: ignore[misc]

    # -- internals -------------------------------------------------------------------------------------------------
    def _instruction(self, instruction: str | None) -> str:
        if instruction is None:
            return self.instruction
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str or None, not {type(instruction).__name__}")
        return instruction

    def _pixie_score(self, queries: str | list[str], documents: list[str], instruction: str, raw: bool) -> list[float]:
        payload: dict[str, Any] = {"queries": queries, "documents": documents, "instruction": instruction, "raw": raw}
        if self._model is not None:
            payload["model"] = self._model
        body = self._request("POST", "/score", payload)
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or len(scores) != len(documents):
            raise self._unexpected("/score", f"expected 'scores' with {len(documents)} numbers")
        return [_as_float(s, "/score", self) for s in scores]

    def _vllm_score(self, text_1: str | list[str], text_2: list[str], count: int, raw: bool) -> list[float]:
        # No truncate_prompt_tokens, ever: vLLM would cut the end of the input, i.e. the template's suffix.
        payload: dict[str, Any] = {"text_1": text_1, "text_2": text_2}
        if self._model is not None:
            payload["model"] = self._model
        body = self._request("POST", "/score", payload)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != count:
            raise self._unexpected("/score", f"expected 'data' with {count} items")
        by_index: dict[int, float] = {}
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count or index in by_index:
                raise self._unexpected("/score", "each 'data' item needs a distinct 'index' within range")
            by_index[index] = _as_float(item.get("score"), "/score", self)
        # vLLM answers in input order today; placing by "index" does not depend on it.
        probabilities = [by_index[i] for i in range(count)]
        return [_logit(p) for p in probabilities] if raw else probabilities

    def _discover_model(self) -> str:
        body = self._request("GET", "/v1/models", None)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict) or not data[0].get("id"):
            raise self._unexpected("/v1/models", "expected {'data': [{'id': ...}]}; pass model= to RemoteScorer")
        if len(data) > 1:
            logger.warning("%s serves several models; using %r (pass model= to choose)", self.base_url, data[0]["id"])
        return str(data[0]["id"])

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url = self.base_url + path
        try:
            response = self._client.request(method, url, json=payload)
        except httpx.ConnectError as exc:
            raise RemoteScorerError(
                f"The scoring server is not reachable at {url} ({exc}). Is it running, and is base_url right?", url=url
            ) from exc
        except httpx.TimeoutException as exc:
            raise RemoteScorerError(
                f"The scoring server at {url} did not answer within {self.timeout} s ({type(exc).__name__}).", url=url
            ) from exc
        except httpx.HTTPError as exc:
            raise RemoteScorerError(f"The request to {url} failed: {exc}", url=url) from exc
        if response.status_code >= 400:
            hint = ""
            if response.status_code == 404 and self.base_url.endswith("/v1"):
                hint = " (base_url should be the server's root, without /v1)"
            raise RemoteScorerError(
                f"{url} answered HTTP {response.status_code}: {_error_detail(response)}{hint}",
                url=url,
                status_code=response.status_code,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise RemoteScorerError(
                f"{url} answered with something that is not JSON", url=url, status_code=response.status_code
            ) from exc

    def _unexpected(self, path: str, what: str) -> RemoteScorerError:
        url = self.base_url + path
        return RemoteScorerError(f"Unexpected answer from {url} (is api={self.api!r} right?): {what}", url=url)


# -- helpers -------------------------------------------------------------------------------------------------------
def _error_detail(response: httpx.Response) -> str:
    """The server's own words: our {"detail"}, vLLM's {"error": {"message"}} or {"message"}, else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("detail", "message"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


def _as_float(value: Any, path: str, scorer: RemoteScorer) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise scorer._unexpected(path, f"a score is {value!r}, not a number")
    return float(value)


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)
