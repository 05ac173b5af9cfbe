"""Each system's memory: loaded and run on one query in a process of its own, against that process before loading."""

from __future__ import annotations

import importlib
import logging
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from .peers import PEERS
from .systems import CARD_SYSTEMS, PEER_SYSTEMS, build_systems
from .timing import Progress
from .workloads import Workload

__all__ = ["measure_memory", "memory_of_system", "peak_rss_mb", "rss_mb"]

logger = logging.getLogger(__name__)


def rss_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def memory_of_system(
    name: str,
    path: str,
    device: str,
    query: str,
    documents: list[str],
    calibration: Sequence[tuple[str, str]] = (),
) -> dict[str, float]:
    """In a fresh process: load one system, score one query, and report that process's peak resident memory.

    A calibrated system calibrates on ``calibration`` as in the timed run, so its calibration counts in the peak.

    ``idle_rss_mb`` is the same process before loading (Python, torch and the libraries), so ``peak_rss_mb`` minus
    it is what the system itself (weights, activations, its library's caches) costs.
    """
    import torch  # noqa: F401  (the baseline includes torch and transformers, as every system needs them)
    import transformers  # noqa: F401

    base = name.partition(":")[0]
    if base in CARD_SYSTEMS:
        import sentence_transformers  # noqa: F401
    if base in PEER_SYSTEMS:  # the runtime's own libraries count as the baseline, as torch does
        for module in PEERS[base].modules:
            importlib.import_module(module)
    idle = rss_mb()
    score = build_systems([name], path, device, calibration=calibration)[name]()
    score(query, documents)
    peak = peak_rss_mb()
    # Peak includes loading (e.g. float32 weights cast to bfloat16); after_query is what stays resident to serve.
    return {"peak_rss_mb": peak, "idle_rss_mb": idle, "rss_over_idle_mb": peak - idle, "rss_after_query_mb": rss_mb()}


def measure_memory(
    names: Sequence[str],
    path: str,
    device: str,
    workload: Workload,
    progress: Progress | None,
    calibration: Sequence[tuple[str, str]] = (),
) -> dict[str, dict[str, float]]:
    """Each system's peak memory in a process of its own (so no system's memory counts against another's)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this process
    out: dict[str, dict[str, float]] = {}
    for name in names:
        if progress is not None:
            progress.doing(f"memory of {name} (own process)")
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                out[name] = pool.submit(
                    memory_of_system,
                    name,
                    path,
                    device,
                    workload.queries[0],
                    workload.documents[0],
                    list(calibration),
                ).result()
        except Exception as exc:  # noqa: BLE001  (a system failing here fails, reported, in the timed run too)
            logger.info("memory of %s not measured: %s: %s", name, type(exc).__name__, exc)
        if progress is not None:
            progress.done()
    return out
