"""``quantize()``: calibrate on the user's pairs, smooth, choose the float layers, round, and write only what passes.

The steps, each with a progress bar:

1. calibration: the unquantized model (float32) scores the calibration pairs while hooks record each linear layer's
   per-channel input maxima;
2. reference: the same model scores the held-out check pairs (the gate's reference);
3. smoothing: a copy of the model gets the SmoothQuant factors folded in and is written, float32, to a staging folder
   beside the output;
4. sensitivity: each decoder layer is rounded alone and the layers that move the scores most are kept in float;
5. check: the staging folder is loaded exactly as a user loads it (``PixieScorer(folder)``: int8 where the CPU has
   int8 units) and scores the check pairs; the gate compares the two;
6. the staging folder becomes the output when the gate holds (or with ``force``), and is removed otherwise.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..cpu import cpu_info
from ..scorer import PixieScorer
from ..template import DEFAULT_INSTRUCTION
from .data import QuantizationData, load_quantization_data
from .gate import GateReport, GateThresholds, compare_scores, require_gate_modules
from .recipe import QuantizationRecipe, QuantizedFolder, int8_fallback_reason, write_quantized_folder
from .sensitivity import LayerSensitivity, choose_kept_layers, measure_sensitivity
from .smoothing import collect_activation_stats, smooth_model

__all__ = ["GateFailedError", "QuantizationResult", "build_int8_folder", "quantize"]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = GateThresholds()
DEFAULT_RECIPE = QuantizationRecipe()


class GateFailedError(RuntimeError):
    """The quantized model failed its quality gate, so nothing was written. ``report`` holds the figures."""

    def __init__(self, report: GateReport) -> None:
        self.report = report
        super().__init__("the int8 model failed its quality gate: " + "; ".join(report.failed))


@dataclass
class QuantizationResult:
    """What :func:`quantize` did."""

    report: GateReport
    recipe: QuantizationRecipe
    output: Path | None
    """Where the model was written (``None``: the gate failed and nothing was written)."""
    forced: bool = False
    """Written although the gate failed (``force=True``)."""
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def quantize(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    thresholds: GateThresholds = DEFAULT_THRESHOLDS,
    recipe: QuantizationRecipe = DEFAULT_RECIPE,
    keep_layers: Sequence[str] | None = None,
    calibration_queries: int = 16,
    calibration_documents: int = 8,
    check_queries: int = 32,
    candidates: int = 20,
    sensitivity_pairs: int = 32,
    split: str = "test",
    seed: int = 0,
    max_length: int | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    force: bool = False,
    show_progress: bool = True,
) -> QuantizationResult:
    """Quantize ``model`` to int8, check it on held-out queries of ``data``, and write it to ``output`` if it passes.

    Args:
        model: The checkpoint (a folder or a Hub id) to quantize.
        data: A BEIR folder or a JSONL file of queries and documents (:mod:`pixie_integrations.quantization.data`).
        output: The folder to write; it must not exist or be empty.
        thresholds: The quality gate (:class:`GateThresholds`: NDCG@10 drop at most 0.005, mean Kendall tau at
            least 0.95).
        recipe: How layers are rounded and smoothed; its ``keep`` is replaced by the sensitivity pass's choice
            unless ``keep_layers`` is given.
        keep_layers: Decoder layers to keep in float (``"model.layers.27"``, or just ``"27"``); ``None``: the
            sensitivity pass decides; ``()``: none.
        calibration_queries, calibration_documents: Calibration queries, and how many of each one's candidates.
        check_queries: Held-out queries for the gate (all their candidates).
        candidates: Candidates per query (BM25 depth for a BEIR folder).
        sensitivity_pairs: Calibration pairs the sensitivity pass scores once per decoder layer.
        split, seed: The qrels split of a BEIR folder; the shuffle before the queries are split.
        max_length, instruction: As for :class:`~pixie_integrations.PixieScorer`.
        force: Write the model even if the gate fails (the report records it).
        show_progress: Progress bars on stderr.

    Raises:
        GateFailedError: The gate failed and ``force`` is off (nothing written).
        FileExistsError: ``output`` exists and is not empty.
    """
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty: give a new folder for the int8 model")
    pairs = load_quantization_data(
        data,
        calibration_queries=calibration_queries,
        calibration_documents=calibration_documents,
        check_queries=check_queries,
        candidates=candidates,
        split=split,
        seed=seed,
    )
    require_gate_modules(judged=pairs.qrels is not None)
    logger.info(
        "Quantizing %s on %s: %d calibration pairs (%d queries), %d check pairs (%d queries)",
        model,
        pairs.source,
        pairs.calibration_pairs,
        len(pairs.calibration),
        pairs.check_pairs,
        len(pairs.check),
    )
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = _quantize_into(
            os.fspath(model),
            pairs,
            staging,
            thresholds=thresholds,
            recipe=recipe,
            keep_layers=keep_layers,
            sensitivity_pairs=sensitivity_pairs,
            max_length=max_length,
            instruction=instruction,
            force=force,
            show_progress=show_progress,
        )
        if result.report.passed or force:
            if out.exists():
                out.rmdir()
            staging.rename(out)
            result.output = out
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _quantize_into(
    model: str,
    pairs: QuantizationData,
    staging: Path,
    *,
    thresholds: GateThresholds,
    recipe: QuantizationRecipe,
    keep_layers: Sequence[str] | None,
    sensitivity_pairs: int,
    max_length: int | None,
    instruction: str,
    force: bool,
    show_progress: bool,
) -> QuantizationResult:
    seconds: dict[str, float] = {}
    options: dict[str, Any] = {"max_length": max_length, "instruction": instruction}
    reference_scores: list[list[float]] = []
    check = [(q.query, q.documents) for q in pairs.check]

    def score_reference(reference: PixieScorer) -> None:
        started = time.perf_counter()
        reference_scores.extend(_score_queries(reference, check, "Reference (float32)", show_progress))
        seconds["reference"] = time.perf_counter() - started

    calibration = [(q.query, q.documents) for q in pairs.calibration]
    recipe, sensitivity = build_int8_folder(
        model,
        calibration,
        staging,
        recipe=recipe,
        keep_layers=keep_layers,
        sensitivity_pairs=sensitivity_pairs,
        show_progress=show_progress,
        seconds=seconds,
        with_reference=score_reference,
        **options,
    )
    started = time.perf_counter()
    quantized = PixieScorer(staging, device="cpu", show_progress_bar=False, **options)
    fallback = int8_fallback_reason(quantized.device)
    quantized_scores = _score_queries(quantized, check, "Checking (int8)", show_progress)
    seconds["check"] = time.perf_counter() - started
    del quantized
    gc.collect()

    report = compare_scores(pairs.check, reference_scores, quantized_scores, qrels=pairs.qrels, thresholds=thresholds)
    if fallback is not None:
        report.notes.append(f"int8 did not run here ({fallback}): the check compared float weights")
    forced = force and not report.passed
    write_quantized_folder(
        staging,
        QuantizedFolder(
            recipe=recipe,
            report=_report_dict(model, pairs, report, sensitivity, seconds, forced=forced),
        ),
    )
    if not report.passed and not force:
        raise GateFailedError(report)
    return QuantizationResult(
        report=report, recipe=recipe, output=None, forced=forced, sensitivity=sensitivity, seconds=seconds
    )


def build_int8_folder(
    model: str | os.PathLike[str],
    calibration: Sequence[tuple[str, Sequence[str]]],
    folder: str | os.PathLike[str],
    *,
    recipe: QuantizationRecipe = DEFAULT_RECIPE,
    keep_layers: Sequence[str] | None = None,
    sensitivity_pairs: int = 32,
    max_length: int | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    show_progress: bool = True,
    seconds: dict[str, float] | None = None,
    with_reference: Callable[[PixieScorer], object] | None = None,
) -> tuple[QuantizationRecipe, list[LayerSensitivity]]:
    """Calibrate on ``(query, documents)`` pairs, smooth, choose the float layers and write an int8 folder, with no
    quality gate: :func:`quantize` runs this and then the gate; the bench's ``pixie-int8`` system runs it alone.

    ``with_reference`` is called with the unquantized float32 scorer before its model is smoothed (the gate scores
    its reference pairs there). Returns the recipe written (its ``keep`` filled in) and the sensitivity figures.
    """
    seconds = seconds if seconds is not None else {}
    folder = Path(folder)
    options: dict[str, Any] = {
        "device": "cpu",
        "max_length": max_length,
        "instruction": instruction,
        "show_progress_bar": False,
    }
    started = time.perf_counter()
    reference = PixieScorer(model, dtype="float32", **options)
    with collect_activation_stats(reference.model) as stats:
        _score_queries(reference, calibration, "Calibrating", show_progress)
    seconds["calibration"] = time.perf_counter() - started
    if with_reference is not None:
        with_reference(reference)

    started = time.perf_counter()
    smoothed = copy.deepcopy(reference.model)  # the loaded model is shared with other scorers: never changed
    if recipe.smooth_alpha is not None:
        smooth_model(smoothed, stats, recipe.smooth_alpha)
    folder.mkdir(parents=True, exist_ok=True)
    smoothed.save_pretrained(folder)
    reference.tokenizer.save_pretrained(folder)
    del reference, smoothed, stats
    gc.collect()
    seconds["smoothing"] = time.perf_counter() - started

    started = time.perf_counter()
    sensitivity: list[LayerSensitivity] = []
    if keep_layers is None:
        sensitivity = _sensitivity(folder, calibration, sensitivity_pairs, recipe, options, show_progress)
        keep = choose_kept_layers(sensitivity)
    else:
        keep = tuple(k if not k.isdigit() else f"model.layers.{k}" for k in keep_layers)
    recipe = replace(recipe, keep=keep)
    seconds["sensitivity"] = time.perf_counter() - started
    write_quantized_folder(folder, QuantizedFolder(recipe=recipe))
    return recipe, sensitivity


def _score_queries(
    scorer: PixieScorer, queries: Sequence[tuple[str, Sequence[str]]], desc: str, show_progress: bool
) -> list[list[float]]:
    """Each ``(query, documents)``'s scores, with a progress bar over the pairs."""
    out = []
    with tqdm(total=sum(len(d) for _, d in queries), desc=desc, unit="pair", disable=not show_progress) as bar:
        for query, documents in queries:
            out.append(scorer.score(query, list(documents)))
            bar.update(len(documents))
    return out


def _sensitivity(
    folder: Path,
    calibration: Sequence[tuple[str, Sequence[str]]],
    limit: int,
    recipe: QuantizationRecipe,
    options: dict[str, Any],
    show_progress: bool,
) -> list[LayerSensitivity]:
    """Per-layer sensitivity on the smoothed float model, in the dtype it will run in (bf16 where the CPU has it)."""
    scorer = PixieScorer(folder, **options)
    chosen: list[tuple[str, list[str]]] = []
    left = limit
    for query, documents in calibration:
        if left <= 0:
            break
        chosen.append((query, list(documents[:left])))
        left -= len(chosen[-1][1])

    def logits() -> list[float]:
        return [s for query, docs in chosen for s in scorer.score(query, docs, raw=True)]

    return measure_sensitivity(scorer.model, logits, recipe, show_progress=show_progress)


def _report_dict(
    model: str,
    pairs: QuantizationData,
    report: GateReport,
    sensitivity: Sequence[LayerSensitivity],
    seconds: dict[str, float],
    *,
    forced: bool,
) -> dict[str, Any]:
    return {
        "gate": report.to_dict(),
        "forced": forced,
        "source_model": model,
        "data": {
            "source": pairs.source,
            **pairs.stats,
            "calibration_pairs": pairs.calibration_pairs,
            "check_pairs": pairs.check_pairs,
        },
        "sensitivity": {s.layer: s.mean_abs_logit_change for s in sensitivity},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "machine": {"cpu": cpu_info().as_dict(), "torch": torch.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
