"""One bench run: the checkpoint, the workload, every system's memory and timed run, and the comparison."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..template import format_document, format_query
from .memory import measure_memory
from .report import compare_with_reference, machine_info
from .systems import build_systems, calibration_size
from .timing import Progress, time_systems
from .workloads import WORKLOADS, CalibrationPairs, Workload, build_random_model, build_workload, calibration_pairs

__all__ = ["bench_checkpoint", "count_input_tokens", "local_checkpoint", "run_benchmark"]

logger = logging.getLogger(__name__)


def run_benchmark(
    *,
    workload: str = "beir",
    model: str | None = None,
    shape: str = "pixie",
    systems: Sequence[str] = ("card-fp32", "card-bf16", "pixie"),
    device: str | None = None,
    queries: int | None = None,
    docs_per_query: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    show_progress: bool = True,
    model_dir: str | os.PathLike[str] | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """Time each system on one workload and the same weights; report speed, memory and score differences.

    Args:
        workload: ``"beir"``, ``"latency"`` or ``"long"``.
        model: A checkpoint to time; ``None`` builds a random one of ``shape`` (no download).
        shape: ``"pixie"`` (28 layers, PIXIE's FLOPs), ``"pixie-4l"`` (4 layers: quick, overstates speed-ups) or
            ``"tiny"``.
        systems: Which of ``card-fp32``, ``card-bf16`` (the model card's CrossEncoder path), ``pixie`` (defaults),
            ``pixie-fp32``, ``pixie-noprefix``, ``pixie-compile``, ``pixie-padded``, and the peers ``openvino-fp32``,
            ``openvino-bf16``, ``openvino-int8``, ``openvino-w8a8``, ``onnxruntime-fp32``, ``onnxruntime-int8`` (CPU;
            their ``batch_size`` default is 4, 1 for ``openvino-w8a8``, e.g. ``openvino-bf16:batch_size=8``;
            ``openvino-w8a8`` calibrates on ``calibration_pairs`` of the workload's pairs, 32 by default, see
            :func:`~pixie_integrations.bench.workloads.calibration_pairs`) to run. The first is the reference for
            ratios and score differences.
        device: ``None`` picks cuda, mps, then cpu.
        queries, docs_per_query: Shrink the workload.
        repeats: Timed passes over the workload (after one untimed warm-up query).
        model_dir: Where to keep the random model (default: a temporary folder).
        memory: Measure each system's peak resident memory in a process of its own (one more load and query per
            system, before the timed run).
    """
    from transformers import AutoTokenizer

    from ..loading import resolve_device

    device_name = str(resolve_device(device))
    with bench_checkpoint(model, shape=shape, seed=seed, model_dir=model_dir) as (path, described):
        tokenizer = AutoTokenizer.from_pretrained(path)
        work = build_workload(workload, tokenizer, seed=seed, queries=queries, docs_per_query=docs_per_query)
        input_tokens = count_input_tokens(tokenizer, work)
        calibration = _calibration(systems, tokenizer, work, seed)
        results, scores, failed = _measure(
            systems, path, device_name, work, repeats, memory, show_progress, calibration
        )
        for stats in results.values():
            stats["tokens_per_s"] = input_tokens * repeats / stats["seconds"]
        reference = next(iter(results))
        compare_with_reference(results, scores, work, reference)
        result: dict[str, Any] = {
            "workload": {
                **asdict(WORKLOADS[workload]),
                # What ran (--queries/--docs cut the workload's own sizes).
                "name": workload,
                "queries": len(work.queries),
                "docs_per_query": len(work.documents[0]),
                "pairs": work.pairs,
                "input_tokens": input_tokens,
                "mean_tokens_per_pair": input_tokens / work.pairs,
            },
            "model": described,
            "machine": machine_info(device_name),
            "reference": reference,
            "systems": results,
            "failed": failed,
        }
        if calibration is not None:
            result["calibration"] = calibration.as_dict()
        return result


def _calibration(systems: Sequence[str], tokenizer: Any, work: Workload, seed: int) -> CalibrationPairs | None:
    """The pairs the calibrated systems (openvino-w8a8) calibrate on, as many as the most any of them takes."""
    n = calibration_size(systems)
    return calibration_pairs(tokenizer, work, n, seed=seed) if n else None


def _measure(
    systems: Sequence[str],
    path: str,
    device: str,
    work: Workload,
    repeats: int,
    memory: bool,
    show_progress: bool,
    calibration: CalibrationPairs | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]], dict[str, str]]:
    """Each system's memory (in a process of its own) and timed run, under one progress bar.

    Returns what :func:`~pixie_integrations.bench.timing.time_systems` does, with each system's memory figures
    added to its stats.
    """
    pairs = calibration.pairs if calibration is not None else []
    factories = build_systems(systems, path, device, calibration=pairs)  # bad names and settings fail here, unloaded
    # Steps: each system's memory run, load and warm-up, then one per system and query.
    steps = len(factories) * (2 + int(memory) + len(work.queries) * repeats)
    progress = Progress(steps, enabled=show_progress)
    try:
        memory_of = measure_memory(list(factories), path, device, work, progress, pairs) if memory else {}
        results, scores, failed = time_systems(factories, work, device, repeats, progress)
    finally:
        progress.close()
    for name, stats in results.items():
        if memory and name not in memory_of:  # it loaded here, but not in a process of its own
            logger.warning("memory of %s not measured (-v says why)", name)
        stats.update(memory_of.get(name, {}))
    return results, scores, failed


def count_input_tokens(tokenizer: Any, work: Workload) -> int:
    """Tokens of every formatted (query, document) pair of the workload, as one text each, no special tokens."""
    return sum(
        len(tokenizer(format_query(q) + format_document(d), add_special_tokens=False)["input_ids"])
        for q, docs in zip(work.queries, work.documents)
        for d in docs
    )


@contextlib.contextmanager
def bench_checkpoint(
    model: str | None, *, shape: str, seed: int, model_dir: str | os.PathLike[str] | None
) -> Iterator[tuple[str, str]]:
    """The folder every system loads, and how the report names the model (a real checkpoint: by that folder).

    ``model=None`` builds a random model of ``shape`` in ``model_dir`` (kept) or a temporary folder (removed on
    exit); otherwise :func:`local_checkpoint`.
    """
    if model is not None:
        path = local_checkpoint(model)
        yield path, path
        return
    with contextlib.ExitStack() as stack:
        if model_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pixie-bench-"))
            model_dir = Path(tmp) / shape
        yield str(build_random_model(shape, model_dir, seed=seed)), f"random {shape}-shaped Qwen3 seq-cls (seed {seed})"


def local_checkpoint(model: str) -> str:
    """A folder holding ``model``: the path itself, or its Hub snapshot (downloaded once, with a progress bar).

    Every system then loads the same local files; without network the Hub cache is used at once (no retries).
    """
    from ..loading import ModelLoadError, hub_unreachable, looks_like_path

    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    if looks_like_path(model):
        raise ModelLoadError(
            f"Model path {model!r} does not exist; point --model at a folder holding a checkpoint (config.json, "
            "weights, tokenizer files), or leave --model out to time a random model of --shape"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            model, local_files_only=hub_unreachable(), ignore_patterns=["*.onnx", "onnx/*", "openvino/*", "*.h5"]
        )
    except Exception as exc:  # not found, gated, or out of reach and not cached: all say the same to the user
        raise ModelLoadError(
            f"Could not get {model!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); pass a local folder "
            "with --model, or leave --model out to time a random model of --shape"
        ) from exc
