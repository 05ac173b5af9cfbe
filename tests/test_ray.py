"""Ray Serve and Ray Data on one local Ray instance (2 CPUs, loopback), with the tiny model.

Two Serve replicas answer concurrent requests from the real ``cohere`` SDK and from ``RemoteScorer`` with the
in-process scores, both replicas serving; a Ray Data job over a few thousand rows keeps its columns and adds the
in-process scores; ``evaluate(engine="ray")`` gives the local path's metrics.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")
pytest.importorskip("fastapi")

import httpx
from ray import serve

from pixie_integrations import PixieScorer
from pixie_integrations.ray import REPLICA_HEADER, app, build_app, rerank_dataset
from pixie_integrations.serving import RemoteScorer
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "beir_tiny"
DOCS = [*SAMPLE_DOCUMENTS, "", "짧은 문서"]
# Half a CPU per replica: two replicas and a Ray Data pool of two half-CPU actors fit the session's 2 CPUs.
REPLICA_OPTIONS = {"num_cpus": 0.5}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def serve_url(ray_cluster: None, tiny_reranker: Path) -> Iterator[str]:
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    application = build_app(
        tiny_reranker, num_replicas=2, ray_actor_options=REPLICA_OPTIONS, device="cpu", dtype="float32"
    )
    serve.run(application, name="pixie", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _jobs(count: int) -> list[tuple[str, list[str]]]:
    return [(SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)], DOCS[i % 4 :]) for i in range(count)]


# -- Ray Serve ---------------------------------------------------------------------------------------------------------
def test_two_replicas_serve_the_in_process_scores_to_concurrent_clients(
    serve_url: str, tiny_scorer: PixieScorer
) -> None:
    jobs = _jobs(48)

    def post(job: tuple[str, list[str]]) -> tuple[str, list[float]]:
        response = httpx.post(f"{serve_url}/score", json={"queries": job[0], "documents": job[1]}, timeout=60)
        assert response.status_code == 200, response.text
        return response.headers[REPLICA_HEADER], response.json()["scores"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(post, jobs))
    for (_, scores), (query, docs) in zip(answers, jobs, strict=True):
        assert scores == pytest.approx(tiny_scorer.score(query, docs), abs=1e-6)
    assert len({replica for replica, _ in answers}) == 2  # both replicas served


def test_remote_scorer_sync_and_async_against_ray_serve(
    serve_url: str, tiny_scorer: PixieScorer, tiny_reranker: Path
) -> None:
    import asyncio

    jobs = _jobs(16)
    with RemoteScorer(serve_url, max_documents_per_request=3) as remote:  # several requests per call, too
        assert remote.model_name == tiny_reranker.name  # served under the folder name, never its path
        with ThreadPoolExecutor(max_workers=8) as pool:
            served = list(pool.map(lambda job: remote.score(*job), jobs))

        async def all_async() -> list[list[float]]:
            return await asyncio.gather(*(remote.ascore(q, d) for q, d in jobs))

        served_async = asyncio.run(all_async())
        ranked = remote.rank(jobs[0][0], jobs[0][1], top_n=3)
    for got, got_async, (query, docs) in zip(served, served_async, jobs, strict=True):
        expected = tiny_scorer.score(query, docs)
        assert got == pytest.approx(expected, abs=1e-6) and got_async == pytest.approx(expected, abs=1e-6)
    assert [r.index for r in ranked] == [r.index for r in tiny_scorer.rank(jobs[0][0], jobs[0][1], top_n=3)]


def test_cohere_sdk_against_ray_serve(serve_url: str, tiny_scorer: PixieScorer, tiny_reranker: Path) -> None:
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(base_url=serve_url, api_key="unused", timeout=60)
    jobs = _jobs(12)

    def rerank(job: tuple[str, list[str]]) -> Any:
        return client.rerank(query=job[0], documents=job[1], model=tiny_reranker.name, top_n=3)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(rerank, jobs))
    for response, (query, docs) in zip(responses, jobs, strict=True):
        expected = tiny_scorer.rank(query, docs, top_n=3)
        assert [r.index for r in response.results] == [r.index for r in expected]
        assert [r.relevance_score for r in response.results] == pytest.approx([r.score for r in expected], abs=1e-6)


def test_the_three_adapters_work_unchanged_against_ray_serve(
    serve_url: str, tiny_reranker: Path, tiny_scorer: PixieScorer
) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    from haystack import Document as HaystackDocument
    from langchain_core.documents import Document as LangChainDocument
    from llama_index.core.schema import NodeWithScore, TextNode

    from pixie_integrations.haystack import PixieRanker
    from pixie_integrations.langchain import PixieRerank as LangChainRerank
    from pixie_integrations.llama_index import PixieRerank as LlamaIndexRerank

    query, texts = SAMPLE_QUERIES[1], SAMPLE_DOCUMENTS
    expected = tiny_scorer.rank(query, texts, top_n=3)
    with RemoteScorer(serve_url) as remote:
        compressed = LangChainRerank(scorer=remote, top_n=3).compress_documents(
            [LangChainDocument(page_content=t, id=f"d{i}") for i, t in enumerate(texts)], query
        )
        nodes = LlamaIndexRerank(scorer=remote, top_n=3).postprocess_nodes(
            [NodeWithScore(node=TextNode(text=t, id_=f"d{i}"), score=0.5) for i, t in enumerate(texts)],
            query_str=query,
        )
    ranker = PixieRanker(model=tiny_reranker.name, api_base_url=serve_url, top_k=3)  # the served name
    ranker.warm_up()
    ranked = ranker.run(query=query, documents=[HaystackDocument(content=t, id=f"d{i}") for i, t in enumerate(texts)])
    want_ids = [f"d{r.index}" for r in expected]
    want_scores = [r.score for r in expected]
    assert [d.id for d in compressed] == want_ids
    assert [d.metadata["relevance_score"] for d in compressed] == pytest.approx(want_scores, abs=1e-6)
    assert [n.node.node_id for n in nodes] == want_ids
    assert [n.score for n in nodes] == pytest.approx(want_scores, abs=1e-6)
    assert [d.id for d in ranked["documents"]] == want_ids
    assert [d.score for d in ranked["documents"]] == pytest.approx(want_scores, abs=1e-6)


def test_errors_and_limits_are_the_servers(serve_url: str) -> None:
    bad = httpx.post(f"{serve_url}/rerank", json={"query": "q", "documents": ["ok", 7]}, timeout=30)
    assert bad.status_code == 422 and "documents[1]" in json.dumps(bad.json())
    health = httpx.get(f"{serve_url}/health", timeout=30)
    assert health.status_code == 200 and REPLICA_HEADER in health.headers


def test_app_builder_reads_command_line_strings(tiny_reranker: Path) -> None:
    application = app(
        {
            "model": str(tiny_reranker),
            "num_replicas": "2",
            "ray_actor_options": '{"num_gpus": 0.5}',
            "max_ongoing_requests": "16",
            "device": "cpu",
            "max_length": "512",
            "reuse_prefix": "false",
        }
    )
    deployment = application._bound_deployment
    assert deployment.name == "PixieReranker"
    assert deployment.num_replicas == 2
    assert deployment.ray_actor_options["num_gpus"] == 0.5
    assert deployment.max_ongoing_requests == 16
    with pytest.raises(TypeError, match="unknown option.*devcie"):
        app({"model": "m", "devcie": "cpu"})
    with pytest.raises(ValueError, match="needs model="):
        app({"num_replicas": "2"})
    with pytest.raises(ValueError, match="JSON"):
        app({"model": "m", "ray_actor_options": "num_gpus=1"})


def test_serve_config_example_is_a_valid_serve_config() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "examples" / "ray_serve_config.yaml").read_text(encoding="utf-8"))
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.import_path == "pixie_integrations.ray:app"
    assert application.route_prefix == "/" and "model" in application.args


# -- Ray Data ----------------------------------------------------------------------------------------------------------
def test_ray_data_scores_pairs_and_keeps_every_column(
    ray_cluster: None, tiny_reranker: Path, tiny_scorer: PixieScorer
) -> None:
    import ray.data

    rows = [
        {
            "id": i,
            "query": SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)],
            "document": DOCS[i % len(DOCS)],
            "meta": {"source": f"s{i % 3}"},
        }
        for i in range(3000)
    ]
    scored = rerank_dataset(
        ray.data.from_items(rows, override_num_blocks=6),
        tiny_reranker,
        document_column="document",
        concurrency=2,
        num_cpus=0.5,
        rows_per_batch=500,
        device="cpu",
        dtype="float32",
    )
    out = sorted(scored.take_all(), key=lambda row: row["id"])
    expected = tiny_scorer.score_pairs([(r["query"], r["document"]) for r in rows])
    assert [{k: v for k, v in row.items() if k != "score"} for row in out] == rows
    assert [row["score"] for row in out] == pytest.approx(expected, abs=1e-6)
    assert all(type(row["score"]) is float for row in out)


def test_ray_data_reranks_candidate_lists(ray_cluster: None, tiny_reranker: Path, tiny_scorer: PixieScorer) -> None:
    import ray.data

    rows = [{"qid": f"q{i}", "query": q, "candidates": d} for i, (q, d) in enumerate(_jobs(200))]
    scored = rerank_dataset(
        ray.data.from_items(rows, override_num_blocks=6),
        tiny_reranker,
        documents_column="candidates",
        concurrency=2,
        num_cpus=0.5,
        rows_per_batch=40,
        device="cpu",
        dtype="float32",
    )
    out = {row["qid"]: row for row in scored.take_all()}
    assert len(out) == len(rows)
    expected: dict[tuple[str, tuple[str, ...]], tuple[list[float], list[int]]] = {}
    for query, docs in {(r["query"], tuple(r["candidates"])) for r in rows}:
        order = [r.index for r in tiny_scorer.rank(query, list(docs))]
        expected[query, docs] = (tiny_scorer.score(query, list(docs)), [order.index(i) + 1 for i in range(len(docs))])
    for row in rows:
        got = out[row["qid"]]
        assert got["query"] == row["query"] and list(got["candidates"]) == row["candidates"]
        scores, ranks = expected[row["query"], tuple(row["candidates"])]
        assert list(got["scores"]) == pytest.approx(scores, abs=1e-6) and list(got["ranks"]) == ranks


def test_batch_scorer_takes_numpy_and_pandas_batches_without_mutating_them(tiny_reranker: Path) -> None:
    import numpy as np
    import pandas as pd

    from pixie_integrations.ray import PixieBatchScorer

    scorer = PixieBatchScorer(tiny_reranker, document_column="text", device="cpu", dtype="float32")
    batch = {"query": np.array(["q1", "q2"], dtype=object), "text": np.array(["a", "b"], dtype=object)}
    out = scorer(batch)
    assert set(batch) == {"query", "text"} and set(out) == {"query", "text", "score"}
    frame = pd.DataFrame({"query": ["q1", "q2"], "text": ["a", "b"]})
    assert scorer(frame)["score"].tolist() == pytest.approx(out["score"].tolist(), abs=1e-7)
    assert list(frame.columns) == ["query", "text"]
    with pytest.raises(KeyError, match="no column 'text'"):
        scorer({"query": np.array(["q"])})
    with pytest.raises(TypeError, match="row 1"):
        scorer({"query": np.array(["q", None], dtype=object), "text": np.array(["a", "b"], dtype=object)})
    with pytest.raises(ValueError, match="already has a column 'score'"):
        scorer({**batch, "score": np.array([1.0, 2.0])})


def test_evaluate_on_ray_gives_the_local_metrics(ray_cluster: None, tiny_reranker: Path) -> None:
    from pixie_integrations.evaluation import evaluate

    options: dict[str, Any] = {"device": "cpu", "dtype": "float32", "cache": False, "plot": False}
    local = evaluate(DATA, str(tiny_reranker), show_progress_bar=False, **options)
    on_ray = evaluate(
        DATA,
        str(tiny_reranker),
        engine="ray",
        ray_options={"concurrency": 2, "num_cpus": 0.5, "rows_per_batch": 64},
        **options,
    )
    here, there = local.models[0], on_ray.models[0]
    assert there.ndcg == pytest.approx(here.ndcg, abs=1e-12) and there.avg_ndcg == pytest.approx(here.avg_ndcg)
    assert there.pairs_scored == here.pairs_scored > 0
    for qid, docs in here.run.items():
        assert there.run[qid] == pytest.approx(docs, abs=1e-5)
    with pytest.raises(ValueError, match="engine"):
        evaluate(DATA, str(tiny_reranker), engine="spark", **options)


def test_eval_cli_ray_flag_selects_the_ray_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixie_integrations.cli import main
    from pixie_integrations.evaluation import runner

    seen: dict[str, Any] = {}

    class Result:
        def to_markdown(self) -> str:
            return "table"

    def fake_evaluate(*args: Any, **kwargs: Any) -> Result:
        seen.update(kwargs)
        return Result()

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    assert main(["eval", "--data", str(DATA), "--model", "m", "--output", str(tmp_path), "--ray"]) == 0
    assert seen["engine"] == "ray"
    assert main(["eval", "--data", str(DATA), "--model", "m", "--output", str(tmp_path)]) == 0
    assert seen["engine"] == "local"
    assert "table" in capsys.readouterr().out


def test_example_runs_offline_with_tiny_model(run_example: Callable[..., Any]) -> None:
    out = run_example("ray_rerank.py", "--tiny", timeout=240).stdout
    assert "RemoteScorer.rank" in out and "Ray shut down." in out
    replicas = out.split("answered by replicas: ")[1].splitlines()[0]
    assert replicas.count(":") == 2  # both replicas answered
    differences = [float(part.split()[0]) for part in out.split("largest difference from the in-process scorer: ")[1:]]
    assert len(differences) == 2 and max(differences) < 1e-5


# -- long documents ----------------------------------------------------------------------------------------------------
LONG = " ".join(SAMPLE_DOCUMENTS * 3)


def test_ray_data_passes_the_long_document_settings_through(
    ray_cluster: None, tiny_reranker: Path, tiny_scorer: PixieScorer
) -> None:
    import ray.data

    from pixie_integrations import LongDocuments

    settings = LongDocuments("chunk", chunk_tokens=32, aggregate="mean")
    rows = [{"id": i, "query": SAMPLE_QUERIES[0], "document": d} for i, d in enumerate([LONG, *DOCS[:3]] * 5)]
    scored = rerank_dataset(
        ray.data.from_items(rows, override_num_blocks=2),
        tiny_reranker,
        document_column="document",
        long_documents=settings,
        concurrency=1,
        num_cpus=0.5,
        device="cpu",
        dtype="float32",
    )
    out = sorted(scored.take_all(), key=lambda row: row["id"])
    expected = tiny_scorer.score_pairs([(r["query"], r["document"]) for r in rows], long_documents=settings)
    assert [row["score"] for row in out] == pytest.approx(expected, abs=1e-6)
    assert expected[0] != pytest.approx(tiny_scorer.score(SAMPLE_QUERIES[0], [LONG])[0], abs=1e-6)  # it chunked
    with pytest.raises(ValueError, match="long_documents must be one of"):  # in the driver, before any actor
        rerank_dataset(ray.data.from_items(rows), tiny_reranker, long_documents="split")


def test_serve_replicas_take_cohere_chunk_fields_and_a_default(
    serve_url: str, tiny_scorer: PixieScorer, tiny_reranker: Path
) -> None:
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=serve_url)
    response = client.rerank(
        model=tiny_reranker.name, query=SAMPLE_QUERIES[0], documents=[LONG, DOCS[1]], max_tokens_per_doc=24
    )
    expected = tiny_scorer.rank(SAMPLE_QUERIES[0], [LONG, DOCS[1]], long_documents="chunk", chunk_tokens=24)
    assert [(r.index, r.pixie_chunk) for r in response.results] == [(r.index, r.chunk.to_dict()) for r in expected]
    application = app({"model": "m", "long_documents": '{"strategy": "chunk", "chunk_tokens": 64}'})
    assert application._bound_deployment.name == "PixieReranker"
    with pytest.raises(ValueError, match="chunk_overlap=64 must be less than chunk_tokens=32"):
        build_app("m", long_documents={"strategy": "chunk", "chunk_tokens": 32, "chunk_overlap": 64})
