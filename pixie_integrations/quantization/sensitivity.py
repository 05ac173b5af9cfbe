"""Which decoder layers to keep in float: each layer rounded alone, its effect on the scores measured.

Rounding error is not spread evenly: a layer whose activations keep large outliers after smoothing (often the first
and the last of a decoder) moves the scores far more than the others. The pass rounds one layer at a time, scores the
calibration pairs, and records the mean absolute change of the logits against the unrounded model. Layers whose
change stands far above the typical layer's (``factor`` times the median) are kept in float, at most ``max_keep``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from .kernels import Int8Linear, WeightScheme
from .recipe import QuantizationRecipe, quantizable_linears
from .smoothing import decoder_layers

__all__ = ["LayerSensitivity", "choose_kept_layers", "measure_sensitivity"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSensitivity:
    """How much rounding one decoder layer (alone) moves the logits."""

    layer: str
    mean_abs_logit_change: float


def measure_sensitivity(
    model: Any,
    score_logits: Callable[[], list[float]],
    recipe: QuantizationRecipe,
    *,
    show_progress: bool = True,
) -> list[LayerSensitivity]:
    """Round each decoder layer of ``model`` alone and measure ``score_logits()`` against the float model.

    ``model`` is changed only while a layer is being measured; it is left as it came.
    """
    scheme = WeightScheme(bits=recipe.weight_bits, per_channel=recipe.per_channel)
    names = {id(m): n for n, m in model.named_modules()}
    everything = QuantizationRecipe(weight_bits=recipe.weight_bits, per_channel=recipe.per_channel)
    linears = quantizable_linears(model, everything)
    reference = score_logits()
    results = []
    layers = decoder_layers(model)
    for layer in tqdm(layers, desc="Sensitivity", unit="layer", disable=not show_progress):
        prefix = names[id(layer)] + "."
        mine = [(parent, attr, linear) for name, parent, attr, linear in linears if name.startswith(prefix)]
        for parent, attr, linear in mine:
            setattr(parent, attr, Int8Linear(linear, scheme))
        try:
            logits = score_logits()
        finally:
            for parent, attr, linear in mine:
                setattr(parent, attr, linear)
        change = statistics.mean(abs(a - b) for a, b in zip(logits, reference))
        results.append(LayerSensitivity(prefix[:-1], change))
    return results


def choose_kept_layers(
    sensitivity: Sequence[LayerSensitivity], *, factor: float = 3.0, max_keep: int = 4
) -> tuple[str, ...]:
    """The layers to keep in float: those moving the logits more than ``factor`` x the median layer, worst first."""
    if not sensitivity or max_keep <= 0:
        return ()
    median = statistics.median(s.mean_abs_logit_change for s in sensitivity)
    outliers = [s for s in sensitivity if s.mean_abs_logit_change > factor * max(median, 1e-12)]
    outliers.sort(key=lambda s: -s.mean_abs_logit_change)
    kept = tuple(s.layer for s in outliers[:max_keep])
    if kept:
        logger.info(
            "Keeping %d of %d decoder layers in float (median change %.3g): %s",
            len(kept),
            len(sensitivity),
            median,
            ", ".join(f"{s.layer} ({s.mean_abs_logit_change:.3g})" for s in outliers[:max_keep]),
        )
    return kept
