"""RemoteScorer against stand-ins for vLLM, TEI and Infinity that handle requests and text as each engine does.

Each stand-in is a small FastAPI app running the tiny checkpoint with plain transformers, reproducing its engine's
request shape, limits, text processing and answer (the source each follows is named on the class). Together they
show which model families give the in-process (the model card's) scores through which engine, that the combinations
that cannot are refused, and that splitting, bounded concurrency, retries and async work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pixie_integrations import PixieScorer, format_document, format_query
from pixie_integrations.serving import RemoteScorer, RemoteScorerError, serve_in_thread
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

QUERY = SAMPLE_QUERIES[1]
DOCS = [*SAMPLE_DOCUMENTS, "  padded with spaces  ", "짧은 문서"]
INSTRUCTION = "Given a question about satellite services, retrieve passages that answer it"


class _Model:
    """The checkpoint as an engine runs it: one forward pass per input (no padding), float32 logits."""

    def __init__(self, path: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
        self.lock = threading.Lock()

    @torch.no_grad()
    def logits(self, encodings: list[dict[str, list[int]]]) -> list[float]:
        with self.lock:
            out = []
            for features in encodings:
                tensors = {k: torch.tensor([v]) for k, v in features.items()}
                out.append(float(self.model(**tensors).logits[0, 0]))
            return out


def _sigmoid(x: float) -> float:
    return float(torch.sigmoid(torch.tensor(x, dtype=torch.float32)))


class _Tracking:
    """Counts requests and the most in flight at once."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    async def track(self, body: Any) -> None:
        with self.lock:
            self.bodies.append(body)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.02)  # overlapping requests stay in flight together
        with self.lock:
            self.in_flight -= 1


class TeiStandIn(_Tracking):
    """text-embeddings-inference ``POST /rerank`` and ``GET /info`` (router/src/http/server.rs ``rerank``;
    core/src/tokenization.rs): each (query, text) is tokenized as a pair with the special tokens, truncated with
    LongestFirst to ``max_input_length`` when ``truncate``, else refused past it; ``raw_scores`` false applies the
    sigmoid; more texts than ``max_client_batch_size`` (default 32) is a 413; answers best first."""

    def __init__(self, path: Path, *, model_id: str = "BAAI/bge-reranker-v2-m3", max_input_length: int = 512) -> None:
        super().__init__()
        self.engine = _Model(path)
        self.model_id = model_id
        self.max_input_length = max_input_length
        self.max_client_batch_size = 32
        self.app = FastAPI()
        self.app.add_api_route("/rerank", self.rerank, methods=["POST"])
        self.app.add_api_route("/info", self.info, methods=["GET"])

    async def rerank(self, request: Request) -> Any:
        body = await request.json()
        await self.track(body)
        texts = body["texts"]
        if not texts:
            return _tei_error(413, "`texts` cannot be empty", "validation")
        if len(texts) > self.max_client_batch_size:
            message = f"batch size {len(texts)} > maximum allowed batch size {self.max_client_batch_size}"
            return _tei_error(413, message, "validation")
        truncate = bool(body.get("truncate", False))
        encodings = []
        for text in texts:
            features = self.engine.tokenizer(
                body["query"],
                text,
                truncation="longest_first" if truncate else False,
                max_length=self.max_input_length if truncate else None,
            )
            if len(features["input_ids"]) > self.max_input_length:
                message = f"`inputs` must have less than {self.max_input_length} tokens"
                return _tei_error(413, message, "validation")
            encodings.append(dict(features))
        logits = self.engine.logits(encodings)
        scores = logits if body.get("raw_scores", False) else [_sigmoid(x) for x in logits]
        ranks = sorted(({"index": i, "score": s} for i, s in enumerate(scores)), key=lambda r: -r["score"])
        return ranks

    def info(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}}}}


def _tei_error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status)


# Infinity's RerankInput (libs/infinity_emb/infinity_emb/fastapi_schemas/pymodels.py): strings are stripped.
_InfinityString = Annotated[str, StringConstraints(max_length=8192 * 15, strip_whitespace=True)]


class InfinityRerankInput(BaseModel):
    query: _InfinityString
    documents: list[_InfinityString] = Field(min_length=1, max_length=2048)
    return_documents: bool = False
    raw_scores: bool = False
    model: str = "default/not-specified"
    top_n: int | None = Field(default=None, gt=0)


class InfinityStandIn(_Tracking):
    """Infinity ``POST /rerank`` and ``GET /models`` (fastapi_schemas/pymodels.py ``RerankInput``/``ReRankResult``;
    transformer/crossencoder/torch.py ``encode_pre``): query and documents are whitespace-stripped (by the schema and
    again in ``encode_pre``), tokenized as pairs with ``truncation="longest_first"``; the sigmoid unless
    ``raw_scores``; results best first as ``{"results": [{"relevance_score", "index"}]}``."""

    def __init__(self, path: Path, *, model_id: str = "BAAI/bge-reranker-base") -> None:
        super().__init__()
        self.engine = _Model(path)
        self.model_id = model_id
        self.app = FastAPI()
        self.app.add_api_route("/rerank", self.rerank, methods=["POST"])
        self.app.add_api_route("/models", self.models, methods=["GET"])

    async def rerank(self, body: InfinityRerankInput) -> Any:
        await self.track(body.model_dump())
        encodings = [
            dict(self.engine.tokenizer(body.query.strip(), d.strip(), truncation="longest_first"))
            for d in body.documents
        ]
        logits = self.engine.logits(encodings)
        scores = logits if body.raw_scores else [_sigmoid(x) for x in logits]
        results = sorted(
            ({"relevance_score": s, "index": i} for i, s in enumerate(scores)), key=lambda r: -r["relevance_score"]
        )
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        return {"object": "rerank", "results": results[: body.top_n], "model": self.model_id, "usage": usage}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "infinity"}]}


class VllmStandIn(_Tracking):
    """vLLM ``POST /score``, ``POST /v1/rerank`` and ``GET /v1/models`` for a pooling (seq-cls) model
    (vllm/entrypoints/openai/serving_score.py, ``_run_scoring`` / ``_cross_encoding_score`` / ``do_rerank``): text_1
    with each text_2 (1:1, 1:N, N:N); an encoder scores the tokenized pair (``tokenizer(text=t1, text_pair=t2)``), a
    decoder the concatenated text_1 + text_2 (the same tokens as the pair for Qwen's tokenizer, which adds none); an
    input past ``max_model_len`` is a 400; the sigmoid of the logit; ``/score`` answers in input order,
    ``/v1/rerank`` best first (``top_n`` 0 or absent: all)."""

    def __init__(self, path: Path, *, model_id: str, max_model_len: int = 40960) -> None:
        super().__init__()
        self.engine = _Model(path)
        self.model_id = model_id
        self.max_model_len = max_model_len
        self.decoder = self.engine.model.config.model_type.startswith("qwen")
        self.app = FastAPI()
        self.app.add_api_route("/score", self.score, methods=["POST"])
        self.app.add_api_route("/v1/rerank", self.rerank, methods=["POST"])
        self.app.add_api_route("/v1/models", self.models, methods=["GET"])

    def _scores(self, text_1: list[str], text_2: list[str]) -> list[float] | JSONResponse:
        if len(text_1) > 1 and len(text_1) != len(text_2):
            return _vllm_error(400, "Input lengths must be either 1:1, 1:N or N:N")
        encodings = []
        for i, b in enumerate(text_2):
            a = text_1[0] if len(text_1) == 1 else text_1[i]
            if self.decoder:
                features = self.engine.tokenizer(a + b, add_special_tokens=False)
            else:
                features = self.engine.tokenizer(a, b)
            if len(features["input_ids"]) > self.max_model_len:
                return _vllm_error(
                    400,
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{len(features['input_ids'])} tokens in the input for scoring.",
                )
            encodings.append(dict(features))
        return [_sigmoid(x) for x in self.engine.logits(encodings)]

    async def score(self, request: Request) -> Any:
        body = await request.json()
        await self.track(body)
        text_1 = [body["text_1"]] if isinstance(body["text_1"], str) else body["text_1"]
        text_2 = [body["text_2"]] if isinstance(body["text_2"], str) else body["text_2"]
        scores = self._scores(text_1, text_2)
        if isinstance(scores, JSONResponse):
            return scores
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        return {"id": "score-1", "object": "list", "model": self.model_id, "data": data, "usage": {}}

    async def rerank(self, request: Request) -> Any:
        body = await request.json()
        await self.track(body)
        scores = self._scores([body["query"]], body["documents"])
        if isinstance(scores, JSONResponse):
            return scores
        results = [
            {"index": i, "document": {"text": d}, "relevance_score": s}
            for i, (d, s) in enumerate(zip(body["documents"], scores))
        ]
        results.sort(key=lambda r: -r["relevance_score"])
        top_n = body.get("top_n") or len(results)
        return {"id": "rerank-1", "model": self.model_id, "usage": {"total_tokens": 0}, "results": results[:top_n]}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "vllm"}]}


def _vllm_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status_code=status)


@pytest.fixture(scope="module")
def encoder_scorer(tiny_encoder: Path) -> PixieScorer:
    return PixieScorer(str(tiny_encoder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tei(tiny_encoder: Path) -> Iterator[tuple[TeiStandIn, str]]:
    stand_in = TeiStandIn(tiny_encoder)
    with serve_in_thread(stand_in.app) as url:
        yield stand_in, url


@pytest.fixture(scope="module")
def infinity(tiny_encoder: Path) -> Iterator[tuple[InfinityStandIn, str]]:
    stand_in = InfinityStandIn(tiny_encoder)
    with serve_in_thread(stand_in.app) as url:
        yield stand_in, url


@pytest.fixture(scope="module")
def vllm_pixie(tiny_reranker: Path) -> Iterator[tuple[VllmStandIn, str]]:
    stand_in = VllmStandIn(tiny_reranker, model_id="telepix/PIXIE-Spell-Reranker-Preview-0.6B", max_model_len=160)
    with serve_in_thread(stand_in.app) as url:
        yield stand_in, url


# -- which families give the card's numbers through which engine --------------------------------------------------------
def test_tei_scores_encoders_like_the_local_scorer(tei: tuple[TeiStandIn, str], encoder_scorer: PixieScorer) -> None:
    stand_in, url = tei
    with RemoteScorer(url, api="tei") as remote:
        assert remote.model_name == "BAAI/bge-reranker-v2-m3"  # from /info
        assert remote.score(QUERY, DOCS) == pytest.approx(encoder_scorer.score(QUERY, DOCS), abs=1e-6)
        assert remote.score(QUERY, DOCS, raw=True) == pytest.approx(
            encoder_scorer.score(QUERY, DOCS, raw=True), abs=1e-5
        )
        ranked = remote.rank(QUERY, DOCS, top_n=3)
    assert [r.index for r in ranked] == [r.index for r in encoder_scorer.rank(QUERY, DOCS, top_n=3)]
    assert stand_in.bodies[-1]["truncate"] is True and "instruction" not in stand_in.bodies[-1]


def test_infinity_scores_encoders_like_the_local_scorer(
    infinity: tuple[InfinityStandIn, str], encoder_scorer: PixieScorer
) -> None:
    _, url = infinity
    with RemoteScorer(url, api="infinity") as remote:
        assert remote.model_name == "BAAI/bge-reranker-base"
        # Stripping whitespace costs an encoder nothing: its tokenizer drops it anyway.
        assert remote.score(QUERY, DOCS) == pytest.approx(encoder_scorer.score(QUERY, DOCS), abs=1e-6)
        assert remote.score(QUERY, DOCS, raw=True) == pytest.approx(
            encoder_scorer.score(QUERY, DOCS, raw=True), abs=1e-5
        )


@pytest.mark.parametrize("route", ["score", "rerank"])
def test_vllm_scores_template_models_like_the_local_scorer(
    vllm_pixie: tuple[VllmStandIn, str], tiny_scorer: PixieScorer, route: str
) -> None:
    stand_in, url = vllm_pixie
    docs = DOCS[:3]  # short enough for the stand-in's max_model_len without cutting
    with RemoteScorer(url, api="vllm", vllm_route=route) as remote:  # type: ignore[arg-type]
        stand_in.bodies.clear()
        got = remote.score(QUERY, docs, instruction=INSTRUCTION)
        assert got == pytest.approx(tiny_scorer.score(QUERY, docs, instruction=INSTRUCTION), abs=1e-5)
        body = stand_in.bodies[-1]
        sent_b = body["text_2"] if route == "score" else body["documents"]
        assert sent_b == [format_document(d) for d in docs]
        pairs = [(SAMPLE_QUERIES[i], d) for i, d in enumerate(docs)]
        assert remote.score_pairs(pairs) == pytest.approx(tiny_scorer.score_pairs(pairs), abs=1e-5)


def test_vllm_qwen3_reranker_conversion_and_encoders(
    tiny_qwen3_pair: tuple[Path, Path], tiny_encoder: Path, encoder_scorer: PixieScorer
) -> None:
    causal, seq_cls = tiny_qwen3_pair
    original = PixieScorer(str(causal), device="cpu", dtype="float32")  # the original Qwen3-Reranker recipe
    qwen = VllmStandIn(seq_cls, model_id="Qwen/Qwen3-Reranker-0.6B")  # vLLM serves its seq-cls conversion
    encoder = VllmStandIn(tiny_encoder, model_id="BAAI/bge-reranker-v2-m3")
    with serve_in_thread(qwen.app) as qwen_url, serve_in_thread(encoder.app) as encoder_url:
        with RemoteScorer(qwen_url, api="vllm") as remote:
            assert remote.score(QUERY, DOCS) == pytest.approx(original.score(QUERY, DOCS), abs=1e-5)
        with RemoteScorer(encoder_url, api="vllm", family="encoder") as remote:
            assert remote.score(QUERY, DOCS) == pytest.approx(encoder_scorer.score(QUERY, DOCS), abs=1e-5)
            assert encoder.bodies[-1]["text_1"] == QUERY  # no template for an encoder


def test_vllm_long_documents_are_cut_on_the_client_like_the_local_scorer(
    vllm_pixie: tuple[VllmStandIn, str], tiny_reranker: Path
) -> None:
    _, url = vllm_pixie
    long_docs = [" ".join(SAMPLE_DOCUMENTS) * 3, SAMPLE_DOCUMENTS[0] + " end" * 80, "short"]
    whole = RemoteScorer(url, api="vllm", max_documents_per_request=2)
    with whole, pytest.raises(RemoteScorerError, match="maximum context length is 160 tokens") as info:
        whole.score(QUERY, long_docs)  # never cut silently by the server
    assert info.value.status_code == 400
    local = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32", max_length=160)
    expected = local.score(QUERY, long_docs)
    with RemoteScorer(url, api="vllm", max_length=160, tokenizer=str(tiny_reranker)) as cut:
        assert cut.score(QUERY, long_docs) == pytest.approx(expected, abs=1e-5)
    # Without tokenizer=, the served model's name is the tokenizer (here vLLM serves a local folder).
    by_path = VllmStandIn(tiny_reranker, model_id=str(tiny_reranker), max_model_len=160)
    with serve_in_thread(by_path.app) as path_url, RemoteScorer(path_url, api="vllm", max_length=160) as cut:
        assert cut.score(QUERY, long_docs) == pytest.approx(expected, abs=1e-5)


def test_template_models_are_refused_where_an_engine_would_change_the_text(
    infinity: tuple[InfinityStandIn, str], tiny_reranker: Path, tiny_scorer: PixieScorer
) -> None:
    for api in ("tei", "infinity"):
        with pytest.raises(ValueError, match="cannot score qwen3-seq-cls"):
            RemoteScorer("http://127.0.0.1:1", api=api, family="qwen3-seq-cls")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="template model 'telepix/PIXIE"):
            RemoteScorer("http://127.0.0.1:1", api=api, model="telepix/PIXIE-Spell-Reranker-Preview-0.6B")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        RemoteScorer("http://127.0.0.1:1", api="tei", max_length=512)
    # Why Infinity is refused: its whitespace stripping eats the suffix's closing newlines, so the same template
    # text sent by hand scores differently from the card's.
    stand_in = InfinityStandIn(tiny_reranker, model_id="telepix/PIXIE-Spell-Reranker-Preview-0.6B")
    with serve_in_thread(stand_in.app) as url:
        body = {"query": format_query(QUERY), "documents": [format_document(d) for d in DOCS[:3]]}
        answer = httpx.post(f"{url}/rerank", json=body, timeout=30).json()["results"]
        with pytest.raises(ValueError, match="strips leading and trailing whitespace"):
            RemoteScorer(url, api="infinity").model_name  # noqa: B018 - the served name tells
    by_index = {r["index"]: r["relevance_score"] for r in answer}
    stripped = [by_index[i] for i in range(3)]
    assert max(abs(a - b) for a, b in zip(stripped, tiny_scorer.score(QUERY, DOCS[:3]))) > 1e-3


# -- splitting, concurrency, retries, async -------------------------------------------------------------------------
def test_long_calls_are_split_and_sent_with_bounded_concurrency(
    tei: tuple[TeiStandIn, str], encoder_scorer: PixieScorer
) -> None:
    stand_in, url = tei
    documents = [DOCS[i % len(DOCS)] + f" {i}" for i in range(150)]
    stand_in.bodies.clear()
    stand_in.most_in_flight = 0
    with RemoteScorer(url, api="tei", max_concurrency=2) as remote:
        assert remote.score(QUERY, documents) == pytest.approx(encoder_scorer.score(QUERY, documents), abs=1e-6)
        pairs = [(SAMPLE_QUERIES[i % 3], d) for i, d in enumerate(documents[:40])]
        assert remote.score_pairs(pairs) == pytest.approx(encoder_scorer.score_pairs(pairs), abs=1e-6)
    sizes = [len(b["texts"]) for b in stand_in.bodies]
    assert sizes[:5] == [32, 32, 32, 32, 22] or sorted(sizes[:5]) == [22, 32, 32, 32, 32]
    assert max(sizes) <= 32 and stand_in.most_in_flight == 2
    assert {b["query"] for b in stand_in.bodies[5:]} == set(SAMPLE_QUERIES[:3])  # TEI: one query per request


async def test_async_scoring_equals_sync(
    tei: tuple[TeiStandIn, str],
    vllm_pixie: tuple[VllmStandIn, str],
    encoder_scorer: PixieScorer,
    tiny_scorer: PixieScorer,
) -> None:
    _, tei_url = tei
    _, vllm_url = vllm_pixie
    # Distinct texts: identical ones tie, and their order then hangs on ~1e-8 of padded-batch noise.
    documents = [f"{DOCS[i % len(DOCS)]} ({i})" for i in range(70)]
    async with RemoteScorer(tei_url, api="tei", max_concurrency=3) as remote:
        got = await remote.ascore(QUERY, documents)
        ranked = await remote.arank(QUERY, documents, top_n=2)
        pairs = [(SAMPLE_QUERIES[i % 3], d) for i, d in enumerate(documents)]
        got_pairs = await remote.ascore_pairs(pairs)
    assert got == pytest.approx(encoder_scorer.score(QUERY, documents), abs=1e-6)
    assert [r.index for r in ranked] == [r.index for r in encoder_scorer.rank(QUERY, documents, top_n=2)]
    assert got_pairs == pytest.approx(encoder_scorer.score_pairs(pairs), abs=1e-6)
    async with RemoteScorer(vllm_url, api="vllm") as remote:
        assert await remote.ascore(QUERY, DOCS[:3]) == pytest.approx(tiny_scorer.score(QUERY, DOCS[:3]), abs=1e-5)
        assert await remote.ascore(QUERY, []) == []


class Flaky:
    """Answers 503 (with Retry-After) and 429 before it answers like a pixie server's /score."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = list(failures)
        self.times: list[float] = []
        self.app = FastAPI()
        self.app.add_api_route("/score", self.score, methods=["POST"])

    async def score(self, request: Request) -> Any:
        body = await request.json()
        self.times.append(time.monotonic())
        if self.failures:
            status = self.failures.pop(0)
            headers = {"Retry-After": "0.3"} if status == 503 else {}
            return JSONResponse({"detail": "overloaded"}, status_code=status, headers=headers)
        return {"id": "s", "model": "m", "scores": [0.5] * len(body["documents"]), "usage": {"pairs": 1}}


def test_retries_back_off_and_honour_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky([503, 429])
    caplog.set_level(logging.WARNING, logger="pixie_integrations.serving.client")
    with serve_in_thread(flaky.app) as url, RemoteScorer(url, model="m", backoff=0.05) as remote:
        assert remote.score(QUERY, ["a", "b"]) == [0.5, 0.5]
    assert len(flaky.times) == 3
    assert flaky.times[1] - flaky.times[0] >= 0.29  # the server's Retry-After, not the 0.05 s backoff
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2
    gives_up = Flaky([503, 503, 503])
    with (
        serve_in_thread(gives_up.app) as url,
        RemoteScorer(url, model="m", retries=1, backoff=0.01) as remote,
        pytest.raises(RemoteScorerError, match="HTTP 503") as info,
    ):
        remote.score(QUERY, ["a"])
    assert info.value.status_code == 503 and len(gives_up.times) == 2
    refused = Flaky([400])
    with (
        serve_in_thread(refused.app) as url,
        RemoteScorer(url, model="m", backoff=0.01) as remote,
        pytest.raises(RemoteScorerError, match="HTTP 400"),
    ):
        remote.score(QUERY, ["a"])
    assert len(refused.times) == 1  # a client error is not retried


def test_connection_failures_are_retried(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    caplog.set_level(logging.WARNING, logger="pixie_integrations.serving.client")
    remote = RemoteScorer(url, model="m", retries=2, backoff=0.01, timeout=5)
    with remote, pytest.raises(RemoteScorerError, match="not reachable"):
        remote.score(QUERY, ["a"])
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_settings_are_checked_and_survive_pickling(tiny_reranker: Path) -> None:
    import pickle

    with pytest.raises(ValueError, match="max_concurrency"):
        RemoteScorer("http://127.0.0.1:1", max_concurrency=0)
    with pytest.raises(ValueError, match="retries"):
        RemoteScorer("http://127.0.0.1:1", retries=-1)
    with pytest.raises(ValueError, match="vllm_route"):
        RemoteScorer("http://127.0.0.1:1", api="vllm", vllm_route="embed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give max_length too"):
        RemoteScorer("http://127.0.0.1:1", api="vllm", tokenizer=str(tiny_reranker))
    original = RemoteScorer(
        "http://127.0.0.1:1", api="vllm", model="m", max_length=64, tokenizer=str(tiny_reranker), retries=1
    )
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.api, copy.max_length, copy.retries, copy.family) == ("vllm", 64, 1, original.family)
    original.close()
    copy.close()
