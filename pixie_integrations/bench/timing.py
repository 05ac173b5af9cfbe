"""The timed run: every system loaded and warmed up, then timed query by query, interleaved; and its progress bar."""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .systems import ScoreFn, parse_system
from .workloads import WORKLOADS, Workload

__all__ = ["NoSystemLoadedError", "Progress", "TimedRun", "load_systems", "time_interleaved", "time_systems"]


class NoSystemLoadedError(RuntimeError):
    """Every system of a bench failed to load: its message names each one's error, in one line."""


logger = logging.getLogger(__name__)


class Progress:
    """The bench bar: one step per load, warm-up or timed call, and what runs now with its seconds so far.

    A call of the card's code on a CPU can take a minute; the ticking label shows the run is alive meanwhile (its
    thread only wakes once a second, which costs the timings nothing measurable).
    """

    def __init__(self, total: int, *, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="bench", unit="step", disable=not enabled, dynamic_ncols=True)
        self._label = ""
        self._since = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._tick, name="pixie-bench-progress", daemon=True)
            self._thread.start()

    def doing(self, label: str) -> None:
        self._label, self._since = label, time.perf_counter()
        self._show()

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._show()

    def _show(self) -> None:
        if self._label:
            self.bar.set_postfix_str(f"{self._label} {time.perf_counter() - self._since:.0f}s")


def _doing(progress: Progress | None, label: str) -> None:
    if progress is not None:
        progress.doing(label)


def _done(progress: Progress | None) -> None:
    if progress is not None:
        progress.done()


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer stopped next counts it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_systems(
    factories: dict[str, Callable[[], ScoreFn]], workload: Workload, device: str, progress: Progress | None
) -> tuple[dict[str, ScoreFn], dict[str, dict[str, Any]], dict[str, str]]:
    """Load every system and warm each up (untimed), keeping the ones that load.

    Returns:
        The loaded systems, each one's ``load_s`` and ``warmup_s``, and the error of each system that failed.
    """
    systems: dict[str, ScoreFn] = {}
    stats: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name, make in factories.items():
        try:
            _doing(progress, f"loading {name}")
            t0 = time.perf_counter()
            score = make()
            load_s = time.perf_counter() - t0
            _done(progress)
            _doing(progress, f"warming up {name}")
            t0 = time.perf_counter()
            _warm_up(name, score, workload)
            sync(device)
            stats[name] = {"load_s": load_s, "warmup_s": time.perf_counter() - t0}
            systems[name] = score
            _done(progress)
        except Exception as exc:  # one failing system (e.g. compilation) must not lose the others
            # Reported by time_systems: in one line when it was the last one, else before the timed run.
            logger.info("system %s failed", name, exc_info=True)  # -v shows where
            failed[name] = f"{type(exc).__name__}: {exc}"
    return systems, stats, failed


def _warm_up(name: str, score: ScoreFn, workload: Workload) -> None:
    """Kernels, allocator, compilation: not timed. A compiled system compiles once per shape bucket, so it warms up
    on every query (its compile time is then all in warmup_s, none in the timed run); the others on the first."""
    warm_up = list(zip(workload.queries, workload.documents))
    if not parse_system(name)[1].get("compile", False):
        warm_up = warm_up[:1]
    spec = WORKLOADS.get(workload.name)
    # Long documents: one warms the kernels up as well as all, at a fraction of the wait.
    cut = spec.warm_up_docs if spec is not None else None
    for query, documents in warm_up:
        score(query, documents[:cut] if cut is not None else documents)


@dataclass
class TimedRun:
    """What the interleaved run measured, per system: each call's seconds, CUDA peaks, the first pass's scores."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """Process CPU time of each system's calls (all threads): less sensitive than wall time to a shared machine."""
    peak_activation_mb: dict[str, float] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)


def time_interleaved(
    systems: dict[str, ScoreFn], workload: Workload, device: str, repeats: int, progress: Progress | None
) -> TimedRun:
    """Time the loaded systems query by query, interleaved, with the order rotated each query.

    Interleaving makes the ratios robust to a machine whose speed drifts during the run, as shared cloud CPUs do:
    every system sees the same conditions, query for query.
    """
    import torch

    cuda = device.startswith("cuda")
    run = TimedRun(
        latencies={name: [] for name in systems},
        cpu_seconds={name: 0.0 for name in systems},
        peak_activation_mb={name: 0.0 for name in systems},
        scores={name: [] for name in systems},
    )
    names = list(systems)
    if not names:  # nothing to time (and no rotation over an empty list)
        return run
    step = 0
    for rep in range(repeats):
        for query, documents in zip(workload.queries, workload.documents):
            for name in names[step % len(names) :] + names[: step % len(names)]:
                _doing(progress, f"{name}, query {step % len(workload.queries) + 1}/{len(workload.queries)}")
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                t0, c0 = time.perf_counter(), time.process_time()
                got = systems[name](query, documents)
                sync(device)
                run.latencies[name].append(time.perf_counter() - t0)
                run.cpu_seconds[name] += time.process_time() - c0
                if cuda:
                    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
                    run.peak_activation_mb[name] = max(run.peak_activation_mb[name], peak)
                if rep == 0:
                    run.scores[name].extend(got)
                _done(progress)
            step += 1
    return run


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _speed_stats(latencies: Sequence[float], pairs: int) -> dict[str, float]:
    """Throughput and latency percentiles of one system's timed calls (``pairs``: how many they scored)."""
    total = sum(latencies)
    return {
        "pairs_per_s": pairs / total,
        "seconds": total,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * _percentile(latencies, 95),
    }


def time_systems(
    factories: dict[str, Callable[[], ScoreFn]],
    workload: Workload,
    device: str,
    repeats: int,
    progress: Progress | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]], dict[str, str]]:
    """Load every system, warm each up on the first query, then time them query by query, interleaved.

    Returns:
        Each loaded system's stats (load, warm-up, throughput, latency; CUDA: peak activation memory), each one's
        scores (first pass, workload order), and the error of each system that failed.

    Raises:
        NoSystemLoadedError: Every system failed to load.
    """
    systems, stats, failed = load_systems(factories, workload, device, progress)
    if not systems:
        raise NoSystemLoadedError("no system loaded: " + "; ".join(f"{n}: {e}" for n, e in failed.items()))
    for name, error in failed.items():  # the others are timed; the table lists it as failed too
        logger.error("system %s failed: %s", name, error)
    run = time_interleaved(systems, workload, device, repeats, progress)
    for name in systems:
        stats[name].update(_speed_stats(run.latencies[name], workload.pairs * repeats))
        stats[name]["cpu_seconds"] = run.cpu_seconds[name]
        if device.startswith("cuda"):
            stats[name]["peak_activation_memory_mb"] = run.peak_activation_mb[name]
    return {n: stats[n] for n in systems}, run.scores, failed
