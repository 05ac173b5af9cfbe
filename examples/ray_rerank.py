"""Rerank on Ray: two Ray Serve replicas behind the rerank API, and a Ray Data batch job.

Run it:

    pip install -e ".[ray]"   # in a clone (once released: pip install "pixie-integrations[ray]")
    # a tiny random model built here: offline, under a minute, meaningless scores (it shows the plumbing)
    python examples/ray_rerank.py --tiny
    # the real PIXIE-Spell-Reranker-Preview-0.6B (downloaded once, ~1.2 GB), or a local copy of it
    python examples/ray_rerank.py --model ./PIXIE-Spell-Reranker-Preview-0.6B

It starts a local Ray instance (this machine only), deploys the model with two replicas on a free loopback port,
sends concurrent requests with RemoteScorer (printing which replica answered each), runs a Ray Data job that adds
scores and ranks to rows of (query, candidates), checks both against the in-process scorer, and shuts Ray down.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import ray
from ray import serve

from pixie_integrations import DEFAULT_MODEL, PixieScorer
from pixie_integrations.ray import REPLICA_HEADER, build_app, rerank_dataset
from pixie_integrations.serving import RemoteScorer

QUERIES = ["국방 분야에 어떤 위성 서비스가 제공되나요?", "What does a satellite imaging company do?"]
DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "A satellite imaging company analyses earth observation data for agriculture, defence and the ocean.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="build a tiny random model here and run fully offline")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas (default 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            from pixie_integrations.testing import build_tiny_reranker

            model = str(build_tiny_reranker(Path(tmp) / "tiny-pixie"))
            print(f"Built a tiny RANDOM reranker in {model} (its scores only show the plumbing, not quality).")
        settings = {"device": "cpu", "dtype": "float32"}
        local = PixieScorer(model, **settings)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        try:
            run_serve(model, settings, local, args.replicas)
            run_data(model, settings, local)
        finally:
            serve.shutdown()
            ray.shutdown()
        print("Ray shut down.")


def run_serve(model: str, settings: dict[str, str], local: PixieScorer, replicas: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # Half a CPU each, so that two replicas and the Ray Data job below fit on two CPUs.
    app = build_app(model, num_replicas=replicas, ray_actor_options={"num_cpus": 0.5}, **settings)
    serve.run(app, name="pixie", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    print(f"\nRay Serve: {replicas} replicas of {model} at {url} (the pixie-rerank serve API)")

    with RemoteScorer(url) as remote, ThreadPoolExecutor(max_workers=8) as pool:
        ranked = remote.rank(QUERIES[0], DOCUMENTS, top_n=3)
        for hit in ranked:
            print(f"  RemoteScorer.rank: #{hit.index} {hit.score:.5f} {hit.document[:50]}")
        served = list(pool.map(lambda i: remote.score(QUERIES[i % 2], DOCUMENTS), range(16)))
    expected = [local.score(q, DOCUMENTS) for q in QUERIES]
    worst = max(abs(a - b) for i, got in enumerate(served) for a, b in zip(got, expected[i % 2]))
    print(f"  16 concurrent calls; largest difference from the in-process scorer: {worst:.2e}")

    def replica_of(i: int) -> str:
        body = {"query": QUERIES[i % 2], "documents": DOCUMENTS}
        return httpx.post(f"{url}/rerank", json=body, timeout=60).headers[REPLICA_HEADER]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = Counter(pool.map(replica_of, range(24)))
    print(f"  24 concurrent requests answered by replicas: {dict(answered)}")
    serve.delete("pixie")


def run_data(model: str, settings: dict[str, str], local: PixieScorer) -> None:
    rows = [{"qid": f"q{i}", "query": QUERIES[i % 2], "candidates": DOCUMENTS[i % 3 :]} for i in range(200)]
    scored = rerank_dataset(
        ray.data.from_items(rows),
        model,
        documents_column="candidates",
        concurrency=2,
        num_cpus=0.5,
        rows_per_batch=50,
        **settings,
    )
    out = sorted(scored.take_all(), key=lambda row: int(row["qid"][1:]))
    print(f"\nRay Data: {len(out)} rows reranked by 2 actors; columns {list(out[0])}")
    print(f"  first row: ranks {list(out[0]['ranks'])}, scores {[round(s, 5) for s in out[0]['scores']]}")
    worst = max(
        abs(a - b) for row in out for a, b in zip(row["scores"], local.score(row["query"], list(row["candidates"])))
    )
    print(f"  largest difference from the in-process scorer: {worst:.2e}")


if __name__ == "__main__":
    main()
