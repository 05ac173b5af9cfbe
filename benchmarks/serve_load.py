"""Throughput and latency of `pixie-rerank serve` under 1, 16 and 64 concurrent clients, against the same work
in-process, in one run.

The server runs as its own process (the real CLI), the clients in this one (httpx, asyncio), so client and server
do not share a Python interpreter. Each request is one query with --docs documents; every concurrency level sends the
same --requests requests. The in-process reference scores the same requests one after another with PixieScorer.

    python benchmarks/serve_load.py --tiny                       # offline: a small random PIXIE-shaped model
    python benchmarks/serve_load.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cuda --requests 256
    python benchmarks/serve_load.py --tiny --json benchmarks/results/serve-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pixie_integrations import DEFAULT_MODEL, PixieScorer
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small random PIXIE-shaped model built here (offline)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--requests", type=int, default=128, help="requests per concurrency level (default: 128)")
    parser.add_argument("--docs", type=int, default=8, help="documents per request (default: 8)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            # Built in a child process: training the tokenizer leaves busy worker threads behind that would slow
            # this process's own (in-process) measurement.
            model = str(Path(tmp) / "bench-model")
            build = (
                "import sys; from pixie_integrations.testing import build_tiny_reranker; "
                "build_tiny_reranker(sys.argv[1], seed=5, num_layers=4, hidden_size=384)"
            )
            subprocess.run([sys.executable, "-c", build, model], check=True, capture_output=True)
        requests = _workload(args.requests, args.docs)
        local = PixieScorer(model, device=args.device, dtype=args.dtype)
        local.score("warm-up", ["warm-up"])
        reference, latencies = [], []
        start = time.perf_counter()
        for query, docs in requests:
            begin = time.perf_counter()
            reference.append(local.score(query, docs))
            latencies.append(time.perf_counter() - begin)
        in_process = args.requests * args.docs / (time.perf_counter() - start)
        rows: list[dict[str, Any]] = [
            {"system": "in-process PixieScorer.score, one caller", "pairs_per_s": in_process, **_percentiles(latencies)}
        ]
        with _server(model, args.device, args.dtype) as url:
            for concurrency in args.concurrency:
                row = asyncio.run(_drive(url, requests, concurrency, reference))
                rows.append({"system": f"pixie-rerank serve, {concurrency} concurrent clients", **row})
    machine = _machine(local)
    print(f"\n{machine}; {args.requests} requests x {args.docs} documents\n")
    print("| system | pairs/s | x in-process | p50 ms | p95 ms | p99 ms | max score diff |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["pairs_per_s"] / in_process
        cells = [f"{row.get(k, float('nan')):.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        diff = f"{row['max_diff']:.1e}" if "max_diff" in row else ""
        print(f"| {row['system']} | {row['pairs_per_s']:.1f} | {ratio:.2f} | {' | '.join(cells)} | {diff} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )


def _workload(count: int, docs: int) -> list[tuple[str, list[str]]]:
    return [
        (
            SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)],
            [f"{SAMPLE_DOCUMENTS[(i + j) % len(SAMPLE_DOCUMENTS)]} ({i}-{j})" for j in range(docs)],
        )
        for i in range(count)
    ]


async def _drive(url: str, requests: list[tuple[str, list[str]]], concurrency: int, reference: list) -> dict[str, Any]:
    latencies: list[float] = []
    diffs: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                query, docs = requests[i]
                start = time.perf_counter()
                response = await client.post("/score", json={"queries": query, "documents": docs})
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                scores = response.json()["scores"]
                diffs.append(max(abs(a - b) for a, b in zip(scores, reference[i], strict=True)))

        await client.get("/health")
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    pairs = sum(len(d) for _, d in requests)
    return {"pairs_per_s": pairs / elapsed, **_percentiles(latencies), "max_diff": max(diffs)}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000}


class _server:
    """`pixie-rerank serve` as a child process on a free loopback port."""

    def __init__(self, model: str, device: str | None, dtype: str | None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.command = [sys.executable, "-m", "pixie_integrations", "serve", "--model", model, "--port", str(self.port)]
        self.command += ["--device", device] if device else []
        self.command += ["--dtype", dtype] if dtype else []
        self.command += ["--max-documents", "100000", "--max-pending-pairs", "1000000"]

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {' '.join(self.command)}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start within 300 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _machine(scorer: PixieScorer) -> str:
    import torch

    if scorer.device.type == "cuda":
        return f"{torch.cuda.get_device_name(scorer.device)}, {scorer.dtype}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}, {str(scorer.dtype).removeprefix('torch.')}"


if __name__ == "__main__":
    main()
