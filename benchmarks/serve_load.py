"""Load and fairness of `pixie-rerank serve`, in one run per scenario: the server runs as its own process (the real
CLI) on loopback, the clients in this one (httpx, asyncio), so client and server do not share a Python interpreter.

Scenarios (``--scenario``, several allowed; ``fairness`` is the four of issue #21):

- ``throughput`` (default): 1, 16 and 64 concurrent clients, each request one query with --docs documents, against
  the same work scored in-process one request after another with PixieScorer.
- ``long``: one request with a document that fills the model's whole input (40,960 tokens for ``--tiny``) while an
  open-loop stream of one-document requests runs: the stream's p50/p95 before (idle) and during it, the long
  request's latency, one long forward pass (the long request alone, or /metrics), statuses, and the target
  p95_during <= 3 * p95_idle + one_batch_s; then the same with 8 such documents in one request.
- ``concurrency``: 64 concurrent one-document requests against one 64-document request (the same 64 pairs), and
  64 concurrent requests that score nothing (``documents: []``), interleaved, median over --reps repetitions.
- ``rank_fields``: a Cohere v1 request of 1,000 objects x 16 KB with ``rank_fields`` while ``/health`` is polled
  every 10 ms: /health p50/p99/max during it (target p99 < 100 ms), the request's status and time.
- ``priority``: a ``priority: -100`` one-document request sent while 3 x 1,000-document requests are queued: its
  latency against the same request on an idle server.

Each scenario starts its own server (the flags it needs are in the JSON), stops by itself, and reports the load
average before and after it: the machine may be shared, so compare figures within one run, not across runs.

    python benchmarks/serve_load.py --tiny                       # offline: a small random PIXIE-shaped model
    python benchmarks/serve_load.py --tiny --scenario fairness --json benchmarks/results/serve-fairness.json
    python benchmarks/serve_load.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cuda --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pixie_integrations import DEFAULT_MODEL, PixieScorer
from pixie_integrations.template import DEFAULT_INSTRUCTION, DOCUMENT_HEAD, SUFFIX, format_query
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES

if TYPE_CHECKING:
    from typing_extensions import Self

SCENARIOS = ("throughput", "long", "concurrency", "rank_fields", "priority")
FAIRNESS = ("long", "concurrency", "rank_fields", "priority")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="a small random PIXIE-shaped model built here (offline)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--scenario",
        nargs="+",
        default=["throughput"],
        choices=[*SCENARIOS, "fairness"],
        help="what to measure (default: throughput; fairness: long concurrency rank_fields priority)",
    )
    group = parser.add_argument_group("throughput")
    group.add_argument("--requests", type=int, default=128, help="requests per concurrency level (default: 128)")
    group.add_argument("--docs", type=int, default=8, help="documents per request (default: 8)")
    group.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    group = parser.add_argument_group("fairness")
    group.add_argument("--long-tokens", type=int, default=40960, help="tokens of the long input (default: 40960)")
    group.add_argument("--long-docs", type=int, nargs="+", default=[1, 8], help="long documents per request")
    group.add_argument("--stream-rate", type=float, default=5.0, help="one-document requests per second (default: 5)")
    group.add_argument("--idle-s", type=float, default=12.0, help="seconds of stream before the long request")
    group.add_argument("--reps", type=int, default=5, help="interleaved repetitions for concurrency (default: 5)")
    group.add_argument(
        "--rank-fields-max-length",
        type=int,
        default=128,
        help="the rank_fields server's --max-length, so that scoring 1,000 x 16 KB stays short (default: 128)",
    )
    group.add_argument("--priority-reps", type=int, default=2, help="repetitions for priority (default: 2)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--recompute",
        type=Path,
        metavar="JSON",
        help="no run: derive the long scenario's summaries and target check again from a saved result's raw records",
    )
    args = parser.parse_args()
    if args.recompute:
        _recompute(args.recompute)
        return
    scenarios = list(dict.fromkeys(s for name in args.scenario for s in (FAIRNESS if name == "fairness" else [name])))

    started = time.time()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
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
        ctx = _Context(args, model, Path(tmp))
        for name in scenarios:
            print(f"-- {name} (load average {_load()})", flush=True)
            before = os.getloadavg()
            begin = time.perf_counter()
            try:
                result = globals()[f"_scenario_{name}"](ctx)
            except Exception as exc:  # noqa: BLE001 - one failing scenario must not lose the others' figures
                result = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"   {name} failed: {result['error']}", flush=True)
            result["load_average_before"] = list(before)
            result["load_average_after"] = list(os.getloadavg())
            result["wall_s"] = time.perf_counter() - begin
            results[name] = result
    machine = _machine(args, load_before)
    print(f"\n{_machine_line(machine)}\n")
    for name, result in results.items():
        _print_scenario(name, result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "machine": machine,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": time.time() - started,
            "args": vars(args) | {"json": str(args.json)},
            "scenarios": results,
        }
        args.json.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _recompute(path: Path) -> None:
    record = json.loads(path.read_text())
    if "error" not in record["scenarios"].get("long", {"error": ""}):
        _long_verdicts(record["scenarios"]["long"])
        record["recomputed_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record["recomputed_by"] = _git("rev-parse", "HEAD")
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{_machine_line(record['machine'])}\n")
    for name, result in record["scenarios"].items():
        _print_scenario(name, result)


class _Context:
    def __init__(self, args: argparse.Namespace, model: str, tmp: Path) -> None:
        self.args = args
        self.model = model
        self.tmp = tmp
        self.serve_flags = _serve_flags()

    def server(self, name: str, flags: list[str]) -> _server:
        return _server(self.model, self.args.device, self.args.dtype, flags, self.tmp / f"server-{name}.log")


# -- throughput (the original run) ---------------------------------------------------------------------------------
def _scenario_throughput(ctx: _Context) -> dict[str, Any]:
    args = ctx.args
    requests = _workload(args.requests, args.docs)
    local = PixieScorer(ctx.model, device=args.device, dtype=args.dtype)
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
    with ctx.server("throughput", ["--max-documents", "100000", "--max-pending-pairs", "1000000"]) as server:
        for concurrency in args.concurrency:
            row = asyncio.run(_drive(server.url, requests, concurrency, reference))
            rows.append({"system": f"pixie-rerank serve, {concurrency} concurrent clients", **row})
        log = server.log_summary()
    for row in rows:
        row["x_in_process"] = row["pairs_per_s"] / in_process
    return {
        "what": f"{args.requests} requests x {args.docs} documents",
        "dtype": str(local.dtype).removeprefix("torch."),
        "server": server.command_line,
        "server_log": log,
        "rows": rows,
    }


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


# -- long: one long document against a stream of short requests ----------------------------------------------------
def _scenario_long(ctx: _Context) -> dict[str, Any]:
    args = ctx.args
    query = f"long: {SAMPLE_QUERIES[3]}"  # a query of its own: the stream's pairs never share its prefix
    document, counts = _long_document(ctx.model, query, args.long_tokens)
    most_docs = max(args.long_docs)
    flags = ["--max-document-chars", str(max(200_000, 2 * len(document)))]
    flags += ["--max-body-bytes", str(max(16 * 1024 * 1024, 8 * most_docs * len(document.encode())))]
    if "--max-document-tokens" in ctx.serve_flags:
        flags += ["--max-document-tokens", str(args.long_tokens)]
    if "--max-request-tokens" in ctx.serve_flags:
        # Enough for one long input; whether several fit in one request is the server's default's call, unless
        # that default is below one input.
        default = ctx.serve_flags["--max-request-tokens"]
        if default is None or default < args.long_tokens:
            flags += ["--max-request-tokens", str(args.long_tokens)]
    result: dict[str, Any] = {"long_input": counts, "document_chars": len(document), "stream_rate": args.stream_rate}
    with ctx.server("long", flags) as server:
        result["server"] = server.command_line
        result["metrics_route"] = asyncio.run(_metrics_text(server.url)) is not None
        alone = asyncio.run(_long_alone(server.url, query, document))
        result["alone"] = alone
        result["variants"] = [
            asyncio.run(_long_under_stream(server.url, query, document, docs, args.stream_rate, args.idle_s))
            for docs in args.long_docs
        ]
        result["server_log"] = server.log_summary()
    _long_verdicts(result)
    return result


def _long_verdicts(result: dict[str, Any]) -> None:
    """Each variant's stream summaries (from its raw records) and its target check, in place.

    One forward pass of the long document: the engine's own batch time from /metrics where it has one, else the
    fastest answered request holding exactly one long document (the long request alone, or the one-document
    variant): each is one forward pass plus tokenizing and HTTP, an upper bound, and on a shared machine the load
    differs between them, so the lower is the closer bound.
    """
    alone = result["alone"]
    candidates = [alone["latency_s"]] if alone["status"] == 200 else []
    candidates += [
        v["long"]["latency_s"] for v in result["variants"] if v["long"]["documents"] == 1 and v["long"]["status"] == 200
    ]
    if alone.get("metrics_batch_s"):
        result["one_batch_s"], result["one_batch_from"] = alone["metrics_batch_s"], "/metrics"
    elif candidates:
        result["one_batch_s"] = min(candidates)
        result["one_batch_from"] = "fastest answered one-long-document request (alone, or under the stream)"
    else:
        result["one_batch_s"], result["one_batch_from"] = None, "no one-long-document request was answered"
    result["one_batch_candidates_s"] = candidates
    for variant in result["variants"]:
        sent, done = variant["long_sent_s"], variant["long_done_s"]
        records = [{"due": due, "latency": ms / 1000, "status": status} for due, ms, status in variant["stream"]]
        variant["stream_idle"] = _summary([r for r in records if r["due"] < sent])
        variant["stream_during"] = _summary([r for r in records if sent <= r["due"] <= done])
        variant["stream_after"] = _summary([r for r in records if r["due"] > done])
        idle, during = variant["stream_idle"], variant["stream_during"]
        if "p95_ms" in idle and "p95_ms" in during and result["one_batch_s"]:  # whatever the long request's status
            bound = 3 * idle["p95_ms"] + result["one_batch_s"] * 1000
            variant["target"] = {
                "rule": "p95_during <= 3 * p95_idle + one_batch (latencies of every answer, 504s included)",
                "bound_ms": bound,
                "p95_during_ms": during["p95_ms"],
                "not_200_during": during["n"] - during["statuses"].get("200", 0),
                "met": during["p95_ms"] <= bound,
            }


def _long_document(model: str, query: str, total_tokens: int) -> tuple[str, dict[str, int]]:
    """A document whose whole input (template, query, document) is ``total_tokens`` tokens, counted with the model's
    own tokenizer the way the server's encoder counts them (text A, then ``<Document>: ...`` and the suffix)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    fixed = len(ids(format_query(query, DEFAULT_INSTRUCTION))) + len(ids(SUFFIX))
    head = len(ids(DOCUMENT_HEAD.rstrip()))

    def rest(doc: str) -> int:  # "<Document>: " and the document, as the encoder tokenizes them
        return len(ids(DOCUMENT_HEAD + doc))

    want = total_tokens - fixed  # tokens of "<Document>: {document}"
    unit = " ".join(SAMPLE_DOCUMENTS) + " "
    doc = unit * (want // max(1, rest(unit) - head) + 2)
    body = ids(doc)[: want - head]
    doc = tokenizer.decode(body)
    while rest(doc) > want:  # decoding and re-encoding may merge differently at the cut
        doc = doc[:-1]
    while rest(doc + "a") <= want:
        doc += "a"
    return doc, {
        "input_tokens": fixed + rest(doc),
        "document_tokens": rest(doc) - head,
        "template_and_query_tokens": fixed + head,
    }


async def _metrics_text(url: str) -> str | None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            response = await client.get("/metrics")
        except httpx.HTTPError:
            return None
    return response.text if response.status_code == 200 else None


_BATCH_METRIC = re.compile(r"^(\w*batch\w*seconds\w*?)_(sum|count)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def _batch_seconds(text: str | None) -> dict[str, float]:
    """Sums and counts of every histogram named like ``*batch*seconds*`` in a Prometheus text page."""
    out: dict[str, float] = {}
    for name, kind, value in _BATCH_METRIC.findall(text or ""):
        out[f"{name}_{kind}"] = out.get(f"{name}_{kind}", 0.0) + float(value)
    return out


async def _long_alone(url: str, query: str, document: str) -> dict[str, Any]:
    body = _encode({"queries": query, "documents": [document]})
    before = _batch_seconds(await _metrics_text(url))
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await client.get("/health")
        start = time.perf_counter()
        response = await client.post("/score", content=body, headers=_JSON)
        latency = time.perf_counter() - start
    out: dict[str, Any] = {"status": response.status_code, "latency_s": latency}
    if response.status_code == 200:
        out["usage"] = response.json().get("usage")
    else:
        out["error"] = response.text[:300]
    after = _batch_seconds(await _metrics_text(url))
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    if delta:
        out["metrics_delta"] = delta
        for key, value in delta.items():
            count = delta.get(key.removesuffix("_sum") + "_count")
            if key.endswith("_sum") and count == 1:
                out["metrics_batch_s"] = value
    return out


async def _long_under_stream(
    url: str, query: str, document: str, docs: int, rate: float, idle_s: float
) -> dict[str, Any]:
    """An open-loop stream of one-document requests (``rate`` per second, each timed from when it was due, so a
    stalled server is not hidden by clients that wait); after ``idle_s`` the long request, and the stream runs until
    it is answered."""
    body = _encode({"queries": query, "documents": [document] * docs})
    stream: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=64)
    long: dict[str, Any] = {"documents": docs, "body_bytes": len(body)}
    async with (
        httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=600) as long_client,
    ):
        await client.post("/score", json={"queries": query, "documents": [SAMPLE_DOCUMENTS[0]]})
        await long_client.get("/health")
        stop = asyncio.Event()
        t0 = time.perf_counter()
        streamer = asyncio.create_task(_open_loop(client, rate, stop, stream, cap_s=idle_s + 900))
        await asyncio.sleep(idle_s)
        sent = time.perf_counter()
        try:
            response = await long_client.post("/score", content=body, headers=_JSON)
            long["status"] = response.status_code
            if response.status_code != 200:
                long["error"] = response.text[:300]
            else:
                long["usage"] = response.json().get("usage")
        except httpx.HTTPError as exc:
            long["status"] = f"client error: {type(exc).__name__}"
        done = time.perf_counter()
        stop.set()
        await streamer
    long["latency_s"] = done - sent
    return {
        "long": long,
        "long_sent_s": sent - t0,
        "long_done_s": done - t0,
        # Every stream request: [due s from the stream's start, latency ms, status].
        "stream": [[round(r["due"], 3), round(r["latency"] * 1000, 1), r["status"]] for r in stream],
    }


async def _open_loop(
    client: httpx.AsyncClient, rate: float, stop: asyncio.Event, out: list[dict[str, Any]], *, cap_s: float
) -> None:
    tasks = []
    start = time.perf_counter()
    for i in range(int(cap_s * rate)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        if stop.is_set():
            break
        body = {
            "queries": SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)],
            "documents": [f"{SAMPLE_DOCUMENTS[i % len(SAMPLE_DOCUMENTS)]} ({i})"],
        }
        tasks.append(asyncio.create_task(_timed(client, "/score", body, due, start, out)))
    await asyncio.gather(*tasks)


async def _timed(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], due: float, origin: float, out: list[dict[str, Any]]
) -> None:
    try:
        response = await client.post(path, json=body)
        status: int | str = response.status_code
    except httpx.HTTPError as exc:
        status = f"client error: {type(exc).__name__}"
    out.append({"due": due - origin, "latency": time.perf_counter() - due, "status": status})


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency percentiles over every answer whatever its status (a 504 after 200 s is no faster than a 200 after
    200 s), and over the 200s alone (``ok_``)."""
    every = [r["latency"] for r in records]
    ok = [r["latency"] for r in records if r["status"] == 200]
    out: dict[str, Any] = {"n": len(records), "statuses": dict(Counter(str(r["status"]) for r in records))}
    if every:
        out |= _percentiles(every) | {"max_ms": max(every) * 1000}
    if ok and len(ok) < len(every):
        out |= {f"ok_{k}": v for k, v in _percentiles(ok).items()}
    return out


# -- concurrency: many small requests against one batched request --------------------------------------------------
def _scenario_concurrency(ctx: _Context) -> dict[str, Any]:
    """The same runs with httpx (what RemoteScorer uses) and, if installed, aiohttp: with many small requests the
    client's own cost per request is part of what is measured, and the two clients differ by an order of
    magnitude there."""
    with ctx.server("concurrency", []) as server:
        result = asyncio.run(_concurrency(server.url, ctx.args.reps, client="httpx"))
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            result["aiohttp"] = "not installed"
        else:
            result["aiohttp"] = asyncio.run(_concurrency(server.url, ctx.args.reps, client="aiohttp"))
        result["server"] = server.command_line
        result["server_log"] = server.log_summary()
    return result


@contextlib.asynccontextmanager
async def _poster(url: str, client: str, connections: int) -> Any:
    """An async ``post(path, body) -> status`` on a pool of ``connections`` keep-alive connections."""
    if client == "httpx":
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as session:

            async def post(path: str, body: dict[str, Any]) -> int:
                return (await session.post(path, json=body)).status_code

            yield post
        return
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def post(path: str, body: dict[str, Any]) -> int:
            async with session.post(path, json=body) as response:
                await response.read()
                return response.status

        yield post


async def _concurrency(url: str, reps: int, n: int = 64, *, client: str) -> dict[str, Any]:
    query = SAMPLE_QUERIES[3]
    docs = [f"{SAMPLE_DOCUMENTS[j % len(SAMPLE_DOCUMENTS)]} ({j})" for j in range(n)]
    runs: dict[str, list[dict[str, Any]]] = {"split": [], "batched": [], "empty": []}
    async with _poster(url, client, n + 1) as post:

        async def one(documents: list[str]) -> tuple[int, float]:
            start = time.perf_counter()
            status = await post("/score", {"queries": query, "documents": documents})
            return status, time.perf_counter() - start

        async def split() -> dict[str, Any]:
            start = time.perf_counter()
            answers = await asyncio.gather(*(one([d]) for d in docs))
            elapsed = time.perf_counter() - start
            return {
                "s": elapsed,
                "pairs_per_s": n / elapsed,
                "statuses": dict(Counter(str(s) for s, _ in answers)),
                **_percentiles([t for _, t in answers]),
            }

        async def batched() -> dict[str, Any]:
            status, elapsed = await one(docs)
            return {"s": elapsed, "pairs_per_s": n / elapsed, "statuses": {str(status): 1}}

        async def empty() -> dict[str, Any]:
            start = time.perf_counter()
            answers = await asyncio.gather(*(one([]) for _ in range(n)))
            elapsed = time.perf_counter() - start
            return {
                "s": elapsed,
                "requests_per_s": n / elapsed,
                "statuses": dict(Counter(str(s) for s, _ in answers)),
                **_percentiles([t for _, t in answers]),
            }

        kinds = {"split": split, "batched": batched, "empty": empty}
        for kind in kinds.values():  # warm-up, and opens the connections
            await kind()
        order = list(kinds)
        for rep in range(reps):
            for name in order[rep % 3 :] + order[: rep % 3]:  # rotate the order: no kind always runs first
                runs[name].append(await kinds[name]())
    ratios = [s["pairs_per_s"] / b["pairs_per_s"] for s, b in zip(runs["split"], runs["batched"], strict=True)]
    return {
        "what": f"{n} concurrent 1-document requests vs one {n}-document request (same query and pairs), "
        f"and {n} concurrent requests with documents []; {reps} interleaved repetitions; client {client}",
        "client": client,
        "split_pairs_per_s": statistics.median(r["pairs_per_s"] for r in runs["split"]),
        "batched_pairs_per_s": statistics.median(r["pairs_per_s"] for r in runs["batched"]),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "target": {"rule": "split / batched pairs/s >= 0.5", "met": statistics.median(ratios) >= 0.5},
        "empty_s_median": statistics.median(r["s"] for r in runs["empty"]),
        "empty_p50_ms_median": statistics.median(r["p50_ms"] for r in runs["empty"]),
        "runs": runs,
    }


# -- rank_fields: a huge structured request must not stall /health -------------------------------------------------
def _scenario_rank_fields(ctx: _Context) -> dict[str, Any]:
    count, size = 1000, 16 * 1024
    documents = []
    for i in range(count):
        title = f"Document {i}: {SAMPLE_QUERIES[i % len(SAMPLE_QUERIES)]}"
        filler = f"({i}) " + " ".join(SAMPLE_DOCUMENTS[(i + j) % len(SAMPLE_DOCUMENTS)] for j in range(200))
        text = filler.encode()[: size - len(title.encode()) - 40].decode(errors="ignore")
        documents.append({"id": str(i), "title": title, "text": text})
    body = _encode({"query": SAMPLE_QUERIES[0], "documents": documents, "rank_fields": ["title", "text"], "top_n": 10})
    flags = ["--max-body-bytes", str(4 * len(body)), "--max-length", str(ctx.args.rank_fields_max_length)]
    with ctx.server("rank_fields", flags) as server:
        result = asyncio.run(_rank_fields(server.url, body))
        result["server"] = server.command_line
        result["server_log"] = server.log_summary()
    result["what"] = f"Cohere v1 /v1/rerank, {count} objects of about {size} bytes, rank_fields [title, text]"
    result["body_bytes"] = len(body)
    return result


async def _rank_fields(url: str, body: bytes) -> dict[str, Any]:
    # (due s, ms from due, ms from sent, status). Polls are due every 10 ms; one that falls due while an earlier
    # poll is still unanswered goes out when that one returns, and its latency counts from when it was due: a
    # stalled server then shows as the many probes that would have waited, not as one slow poll.
    polls: list[tuple[float, float, float, int | str]] = []
    stop = threading.Event()

    def poll() -> None:  # its own thread and connection: this process's event loop is not what is measured
        with httpx.Client(base_url=url, timeout=60) as client:
            origin = time.perf_counter()
            i = 0
            while not stop.is_set():
                due = origin + i * 0.010
                i += 1
                time.sleep(max(0.0, due - time.perf_counter()))
                begin = time.perf_counter()
                try:
                    status: int | str = client.get("/health").status_code
                except httpx.HTTPError as exc:
                    status = f"client error: {type(exc).__name__}"
                end = time.perf_counter()
                polls.append((due - origin, (end - due) * 1000, (end - begin) * 1000, status))

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await client.post("/v1/rerank", json={"query": "warm-up", "documents": ["warm-up"]})
        poller = threading.Thread(target=poll, daemon=True)
        origin = time.perf_counter()
        poller.start()
        await asyncio.sleep(1.0)
        sent = time.perf_counter() - origin
        try:
            response = await client.post("/v1/rerank", content=body, headers=_JSON)
            status: int | str = response.status_code
            detail = response.text[:300] if status != 200 else None
        except httpx.HTTPError as exc:
            status, detail = f"client error: {type(exc).__name__}", None
        done = time.perf_counter() - origin
        await asyncio.sleep(0.5)
        stop.set()
        poller.join(timeout=60)

    def health(window: list[tuple[float, float, float, int | str]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(window), "statuses": dict(Counter(str(p[3]) for p in window))}
        for key, column in (("", 1), ("service_", 2)):  # from due (the probe's view), and from sent
            values = [p[column] for p in window if p[3] == 200]
            if values:
                cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
                out |= {f"{key}p50_ms": cuts[49], f"{key}p99_ms": cuts[98], f"{key}max_ms": max(values)}
        return out

    during = health([p for p in polls if sent <= p[0] <= done])
    result: dict[str, Any] = {
        "rerank": {"status": status, "latency_s": done - sent, **({"error": detail} if detail else {})},
        "health_before": health([p for p in polls if p[0] < sent]),
        "health_during": during,
    }
    if "p99_ms" in during:
        result["target"] = {"rule": "/health p99 < 100 ms", "met": during["p99_ms"] < 100}
    return result


# -- priority: an urgent request behind a queue --------------------------------------------------------------------
def _scenario_priority(ctx: _Context) -> dict[str, Any]:
    with ctx.server("priority", []) as server:
        result = asyncio.run(_priority(server.url, ctx.args.priority_reps))
        result["server"] = server.command_line
        result["server_log"] = server.log_summary()
    return result


async def _priority(url: str, reps: int, big: int = 1000) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    # Its own query: a query shared with a queued request would share its prefix group and batches.
    urgent = {"query": f"urgent: {SAMPLE_QUERIES[0]}", "documents": [SAMPLE_DOCUMENTS[0]], "priority": -100}
    idle: list[float] = []
    runs = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def timed(body: dict[str, Any]) -> tuple[int, float]:
            start = time.perf_counter()
            response = await client.post("/rerank", json=body)
            return response.status_code, time.perf_counter() - start

        async def pending() -> int | None:
            response = await client.get("/ready")
            return response.json().get("pending_pairs")

        await timed(urgent)
        for rep in range(reps):
            for _ in range(3):
                status, latency = await timed(urgent)
                if status == 200:
                    idle.append(latency)
            bodies = [
                {
                    "query": SAMPLE_QUERIES[(rep + k) % len(SAMPLE_QUERIES)],
                    "documents": [f"{SAMPLE_DOCUMENTS[j % len(SAMPLE_DOCUMENTS)]} ({rep}-{k}-{j})" for j in range(big)],
                }
                for k in range(3)
            ]
            queued = [asyncio.create_task(timed(b)) for b in bodies]
            deadline = time.perf_counter() + 5
            seen = 0
            while time.perf_counter() < deadline:  # until the three are in the engine's pool (or 5 s)
                seen = await pending() or 0
                if seen >= 2 * big:
                    break
                await asyncio.sleep(0.02)
            status, latency = await timed(urgent)
            answers = await asyncio.gather(*queued)
            runs.append(
                {
                    "pending_pairs_when_sent": seen,
                    "urgent": {"status": status, "latency_s": latency},
                    "queued": [{"status": s, "latency_s": t} for s, t in answers],
                }
            )
    urgent_ok = [r["urgent"]["latency_s"] for r in runs if r["urgent"]["status"] == 200]
    idle_median = statistics.median(idle) if idle else None
    loaded_median = statistics.median(urgent_ok) if urgent_ok else None
    return {
        "what": f"a priority -100 one-document /rerank sent while 3 x {big}-document requests are queued",
        "idle_ms_median": idle_median * 1000 if idle_median else None,
        "urgent_ms_median": loaded_median * 1000 if loaded_median else None,
        "x_idle": loaded_median / idle_median if idle_median and loaded_median else None,
        "queued_s_median": statistics.median(q["latency_s"] for r in runs for q in r["queued"]),
        "runs": runs,
    }


# -- pieces --------------------------------------------------------------------------------------------------------
_JSON = {"content-type": "application/json"}


def _encode(body: Any) -> bytes:
    """The body as bytes, encoded once before any timing (httpx would encode it on the event loop)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {"p50_ms": latencies[0] * 1000, "p95_ms": latencies[0] * 1000, "p99_ms": latencies[0] * 1000}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p95_ms": cuts[94] * 1000, "p99_ms": cuts[98] * 1000}


def _serve_flags() -> dict[str, int | None]:
    """The flags ``pixie-rerank serve --help`` offers, each with its default where the help states a number."""
    text = subprocess.run(
        [sys.executable, "-m", "pixie_integrations", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags: dict[str, int | None] = {}
    for match in re.finditer(r"^\s+(--[a-z][a-z-]+)\b(.*?)(?=^\s+--|\Z)", text, re.MULTILINE | re.DOTALL):
        default = re.search(r"\(default:\s*([0-9_]+)\)", " ".join(match.group(2).split()))
        flags[match.group(1)] = int(default.group(1).replace("_", "")) if default else None
    return flags


class _server:
    """`pixie-rerank serve` as a child process on a free loopback port, its log in a file."""

    def __init__(self, model: str, device: str | None, dtype: str | None, flags: list[str], log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.command = [sys.executable, "-m", "pixie_integrations", "serve", "--model", model, "--port", str(self.port)]
        self.command += ["--device", device] if device else []
        self.command += ["--dtype", dtype] if dtype else []
        self.command += flags
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        self.command_line = " ".join(["pixie-rerank", *self.command[3:]])

    def __enter__(self) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.command_line}\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start within 300 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_summary(self) -> dict[str, Any]:
        """Warnings, errors and tracebacks the server logged (each distinct line once, with its count)."""
        lines = self.log.read_text(errors="replace").splitlines()
        notable = Counter(
            re.sub(r"\d+", "N", line.strip())[:200]
            for line in lines
            if re.search(r"WARNING|ERROR|Traceback|Error:|Exception", line)
        )
        return {"lines": len(lines), "notable": dict(notable.most_common(10))}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine(args: argparse.Namespace, load_before: tuple[float, float, float]) -> dict[str, Any]:
    import torch

    name = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        name = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    machine: dict[str, Any] = {
        "cpu": name,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "model": "tiny random (build_tiny_reranker seed=5, num_layers=4, hidden_size=384)" if args.tiny else args.model,
        "device": args.device or "default",
        "dtype": args.dtype or "server default",
    }
    if torch.cuda.is_available() and (args.device or "cuda").startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    try:
        from pixie_integrations.cpu import cpu_defaults, cpu_info

        machine["cpu_class"] = cpu_info().cpu_class.value
        machine["cpu_default_dtype"] = cpu_defaults().dtype
    except Exception:  # noqa: BLE001, S110 - informational only
        pass
    return machine


def _git(*command: str) -> str | None:
    try:
        run = subprocess.run(
            ["git", "-C", str(REPO), *command], check=False, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def _machine_line(machine: dict[str, Any]) -> str:
    load = " ".join(f"{x:.2f}" for x in machine["load_average_before"])
    after = " ".join(f"{x:.2f}" for x in machine["load_average_after"])
    commit = (machine["git_commit"] or "?")[:10] + (" (dirty)" if machine["git_dirty"] else "")
    return (
        f"{machine['cpu']}, {machine['cores']} CPUs, torch {machine['torch']}, {machine['dtype']}; commit {commit}; "
        f"load average {load} before, {after} after"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _print_scenario(name: str, result: dict[str, Any]) -> None:
    load = " ".join(f"{x:.2f}" for x in result["load_average_before"])
    print(f"## {name}  (load average before {load}; {result['wall_s']:.0f} s)")
    if "error" in result:
        print(f"failed: {result['error']}\n")
        return
    if name == "throughput":
        print("| system | pairs/s | x in-process | p50 ms | p95 ms | p99 ms | max score diff |")
        print("|---|---|---|---|---|---|---|")
        for row in result["rows"]:
            cells = [f"{row.get(k, float('nan')):.0f}" for k in ("p50_ms", "p95_ms", "p99_ms")]
            diff = f"{row['max_diff']:.1e}" if "max_diff" in row else ""
            print(
                f"| {row['system']} | {row['pairs_per_s']:.1f} | {row['x_in_process']:.2f} | {' | '.join(cells)} |"
                f" {diff} |"
            )
    elif name == "long":
        alone = result["alone"]
        print(
            f"long input {result['long_input']['input_tokens']} tokens; alone: {alone['status']} in "
            f"{alone['latency_s']:.1f} s; one batch {_ms(result['one_batch_s'])} s ({result['one_batch_from']})"
        )
        print(
            "| long docs | long status | long s | idle p50/p95 ms | during p50/p95/max ms | during statuses | target |"
        )
        print("|---|---|---|---|---|---|---|")
        for v in result["variants"]:
            idle, during, target = v["stream_idle"], v["stream_during"], v.get("target")
            verdict = "-" if not target else f"{'met' if target['met'] else 'MISSED'} (<= {target['bound_ms']:.0f})"
            print(
                f"| {v['long']['documents']} | {v['long']['status']} | {v['long']['latency_s']:.1f} | "
                f"{_ms(idle.get('p50_ms'))}/{_ms(idle.get('p95_ms'))} | {_ms(during.get('p50_ms'))}/"
                f"{_ms(during.get('p95_ms'))}/{_ms(during.get('max_ms'))} | {during['statuses']} | {verdict} |"
            )
    elif name == "concurrency":
        for run in (result, result.get("aiohttp")):
            if not isinstance(run, dict):
                continue
            print(
                f"{run.get('client', 'httpx')}: 64 x 1-doc: {run['split_pairs_per_s']:.0f} pairs/s; 1 x 64-doc: "
                f"{run['batched_pairs_per_s']:.0f} pairs/s; ratio {run['ratio_median']:.2f} (target >= 0.5: "
                f"{'met' if run['target']['met'] else 'MISSED'}); 64 x empty: {run['empty_s_median'] * 1000:.0f} ms"
                f" in all, p50 {run['empty_p50_ms_median']:.0f} ms"
            )
    elif name == "rank_fields":
        before, during, rerank = result["health_before"], result["health_during"], result["rerank"]
        target = result.get("target")
        print(
            f"rerank {rerank['status']} in {rerank['latency_s']:.1f} s ({result['body_bytes'] / 1e6:.1f} MB); "
            f"/health before p50/p99/max {_ms(before.get('p50_ms'))}/{_ms(before.get('p99_ms'))}/"
            f"{_ms(before.get('max_ms'))} ms, during {_ms(during.get('p50_ms'))}/{_ms(during.get('p99_ms'))}/"
            f"{_ms(during.get('max_ms'))} ms over {during['n']} polls due (one poll's own time p99/max "
            f"{_ms(during.get('service_p99_ms'))}/{_ms(during.get('service_max_ms'))} ms; target p99 < 100: "
            f"{'-' if not target else 'met' if target['met'] else 'MISSED'})"
        )
    elif name == "priority":
        print(
            f"priority -100 one-doc request: idle {_ms(result['idle_ms_median'])} ms, behind 3 x 1000 docs "
            f"{_ms(result['urgent_ms_median'])} ms (x{result['x_idle'] or float('nan'):.0f}); the queued requests "
            f"took {result['queued_s_median']:.1f} s"
        )
    print()


if __name__ == "__main__":
    main()
