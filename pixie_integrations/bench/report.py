"""What the bench reports: ratios and ranking agreement against the reference system, the machine, the table."""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Sequence
from typing import Any

from ..cpu import cpu_info, torch_build
from .workloads import Workload

__all__ = ["compare_with_reference", "format_table", "kendall_tau", "machine_info", "machine_line", "ranking_agreement"]


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists (1: the same order; ties count as neither agreeing nor disagreeing)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else 1.0


def ranking_agreement(
    scores: Sequence[float], reference: Sequence[float], work: Workload, name: str, k: int = 10
) -> dict[str, float]:
    """How far a system's rankings agree with the reference's, per query: Kendall's tau and top-k overlap (mean)."""
    taus, overlaps, start = [], [], 0
    for documents in work.documents:
        got, ref = scores[start : start + len(documents)], reference[start : start + len(documents)]
        start += len(documents)
        taus.append(kendall_tau(got, ref))
        top = min(k, len(documents))
        best = {i for i in sorted(range(len(got)), key=lambda i: -got[i])[:top]}
        ref_best = {i for i in sorted(range(len(ref)), key=lambda i: -ref[i])[:top]}
        overlaps.append(len(best & ref_best) / top)
    return {
        "kendall_tau_vs_" + name: statistics.mean(taus),
        f"top{k}_overlap_vs_" + name: statistics.mean(overlaps),
    }


def compare_with_reference(
    results: dict[str, dict[str, Any]], scores: dict[str, list[float]], work: Workload, reference: str
) -> None:
    """Add to each system's stats its speed-up, latency ratio, largest score difference and ranking agreement
    against ``reference`` (the reference gets them too: 1, 1, 0 and full agreement)."""
    for name, stats in results.items():
        stats["speedup_vs_" + reference] = stats["pairs_per_s"] / results[reference]["pairs_per_s"]
        if stats.get("cpu_seconds") and results[reference].get("cpu_seconds"):
            stats["cpu_time_speedup_vs_" + reference] = results[reference]["cpu_seconds"] / stats["cpu_seconds"]
        stats["latency_p50_ratio_vs_" + reference] = stats["latency_p50_ms"] / results[reference]["latency_p50_ms"]
        stats["max_abs_score_diff_vs_" + reference] = max(abs(a - b) for a, b in zip(scores[name], scores[reference]))
        stats.update(ranking_agreement(scores[name], scores[reference], work, reference))


def machine_info(device: str) -> dict[str, Any]:
    """The device, library versions, CPU (model, class, flags), threads and torch build the run had."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_info().as_dict(),
        "cpu_threads": torch.get_num_threads(),
        "torch_build": torch_build(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(machine: dict[str, Any]) -> str:
    """CPU model, class, ISA flags, threads and torch build, in one line."""
    cpu = machine.get("cpu")
    build = machine.get("torch_build", {})
    if not isinstance(cpu, dict):  # results written before the CPU was recorded
        return f"cpu: {cpu}, {machine.get('cpu_threads')} threads, torch {machine.get('torch')}"
    libs = ", ".join(
        f"{lib} {build[key]}" for lib, key in (("MKL", "mkl_version"), ("oneDNN", "onednn_version")) if key in build
    )
    return (
        f"cpu: {cpu['model']} (class {cpu['class']}; {', '.join(cpu['flags']) or 'no flags of note'}), "
        f"{machine.get('cpu_threads')} threads; torch {machine.get('torch')}"
        + (f" ({libs}, kernels {build.get('cpu_capability')})" if build else "")
    )


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of one benchmark result."""
    ref = result["reference"]
    lines = [
        (
            f"workload {result['workload']['name']}: {result['workload']['pairs']} pairs, "
            f"{result['workload']['mean_tokens_per_pair']:.0f} tokens/pair; model: {result['model']}; "
            f"device: {result['machine'].get('gpu', result['machine']['device'])}"
        ),
        machine_line(result["machine"]),
        "",
        (
            f"| system | pairs/s | tokens/s | p50 ms | p95 ms | speed-up vs {ref} | CPU-time speed-up | "
            "max |score diff| | Kendall tau | peak RSS MB |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["systems"].items():
        rss = f"{s['peak_rss_mb']:.0f}" if "peak_rss_mb" in s else "-"
        cpu = s.get("cpu_time_speedup_vs_" + ref)
        cpu_speedup = f"{cpu:.2f}x" if cpu is not None else "-"
        lines.append(
            f"| {name} | {s['pairs_per_s']:.3g} | {s['tokens_per_s']:.0f} | {s['latency_p50_ms']:.0f} | "
            f"{s['latency_p95_ms']:.0f} | {s['speedup_vs_' + ref]:.2f}x | {cpu_speedup} | "
            f"{s['max_abs_score_diff_vs_' + ref]:.2e} | "
            f"{s.get('kendall_tau_vs_' + ref, float('nan')):.4f} | {rss} |"
        )
    for name, error in result.get("failed", {}).items():
        lines.append(f"| {name} | failed: {error[:80]} | | | | | | | | |")
    lines.append("")
    lines.append(
        "pairs/s counts documents scored (a chunked system's chunk inputs are not pairs); CPU-time speed-up: the "
        f"process CPU time of {ref}'s calls over each system's, less sensitive than wall time to a shared machine."
    )
    if any("peak_rss_mb" in s for s in result["systems"].values()):
        lines.append("")
        lines.append(
            "peak RSS: each system loaded and run on one query in a process of its own (loading included; the JSON "
            "also has rss_after_query_mb)."
        )
    return "\n".join(lines)
