"""Pairs/s of the rerank API on Ray Serve with 1 and with 2 replicas (one CPU each), on loopback.

    python benchmarks/ray_serve_replicas.py                      # a small random model built here (offline)
    python benchmarks/ray_serve_replicas.py --model ./PIXIE      # a real checkpoint
    python benchmarks/ray_serve_replicas.py --json benchmarks/results/ray-serve-cpu.json

Starts a local Ray instance with --cpus CPUs, deploys the model with 1 replica, then 2, then 1, ... (--rounds times
each, interleaved so that a busy machine affects both alike), and for each deployment sends --requests POST /score
requests of --docs documents from --clients concurrent clients. Prints pairs/s and latency per replica count, the
medians over rounds and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("ray_serve_replicas")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(url: str, *, clients: int, requests: int, docs: int) -> dict[str, float]:
    import httpx

    from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

    bodies = [
        {
            "queries": SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)],
            "documents": [SAMPLE_DOCUMENTS[(i + j) % len(SAMPLE_DOCUMENTS)] + f" ({i}.{j})" for j in range(docs)],
        }
        for i in range(requests)
    ]
    with httpx.Client(timeout=300) as client:

        def post(body: dict[str, Any]) -> float:
            start = time.perf_counter()
            response = client.post(f"{url}/score", json=body)
            response.raise_for_status()
            return time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(post, bodies[: clients * 2]))  # warm-up: every replica has answered
            start = time.perf_counter()
            latencies = sorted(pool.map(post, bodies))
            wall = time.perf_counter() - start
    return {
        "pairs_per_s": requests * docs / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint folder or hub id (default: a small random model built here)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement (default 48)")
    parser.add_argument("--docs", type=int, default=16, help="documents per request (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per replica count (default 3)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random model (default 4)")
    parser.add_argument("--hidden", type=int, default=384, help="hidden width of the random model (default 384)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import ray
    from ray import serve

    from pixie_integrations.ray import build_app
    from pixie_integrations.testing import build_tiny_reranker

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            # Enough work per pair that scoring, not HTTP, dominates.
            model = str(build_tiny_reranker(Path(tmp) / "small", num_layers=args.layers, hidden_size=args.hidden))
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        try:
            for round_ in range(args.rounds):
                for replicas in (1, 2):
                    app = build_app(
                        model, num_replicas=replicas, ray_actor_options={"num_cpus": 1}, device="cpu", dtype="float32"
                    )
                    serve.run(app, name="pixie", route_prefix="/")
                    figures = measure(url, clients=args.clients, requests=args.requests, docs=args.docs)
                    runs[replicas].append(figures)
                    logger.info(
                        "round %d, %d replica(s): %.1f pairs/s, p50 %.0f ms, p95 %.0f ms",
                        round_ + 1,
                        replicas,
                        figures["pairs_per_s"],
                        figures["p50_ms"],
                        figures["p95_ms"],
                    )
                    serve.delete("pixie")
        finally:
            serve.shutdown()
            ray.shutdown()

    median = {n: statistics.median(r["pairs_per_s"] for r in rs) for n, rs in runs.items()}
    result = {
        "cpu": cpu_name(),
        "cpus": args.cpus,
        "model": args.model or f"random Qwen3 seq-cls, {args.layers} layers, hidden {args.hidden} (float32)",
        "clients": args.clients,
        "requests": args.requests,
        "docs_per_request": args.docs,
        "runs": {str(n): rs for n, rs in runs.items()},
        "median_pairs_per_s": {str(n): v for n, v in median.items()},
        "ratio_2_vs_1": median[2] / median[1],
    }
    print(f"CPU: {result['cpu']} ({args.cpus} CPUs for Ray); one CPU per replica")
    for n in (1, 2):
        print(f"{n} replica(s): {median[n]:.1f} pairs/s (median of {len(runs[n])})")
    print(f"2 vs 1 replicas: {result['ratio_2_vs_1']:.2f}x")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
