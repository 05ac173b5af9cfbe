"""Int8 for CPUs that proves itself on the user's own data: ``pixie-rerank quantize`` and its Python API.

``quantize(model, data, output)`` calibrates SmoothQuant on the data's pairs, keeps the decoder layers that rounding
hurts most in float, checks the int8 model against the unquantized one on held-out queries (NDCG@10, Kendall tau,
top-10 overlap, largest score difference) and writes it only if the gate holds. The folder then loads wherever a
model does (``PixieScorer("./pixie-int8")``, the adapters, the server, Ray, the bench).

Importing this package is light: the heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .gate import GateReport, GateThresholds
    from .quantizer import GateFailedError, QuantizationResult, build_int8_folder, quantize
    from .recipe import QuantizationRecipe, QuantizedFolder, read_quantized_folder

__all__ = [
    "GateFailedError",
    "GateReport",
    "GateThresholds",
    "QuantizationRecipe",
    "QuantizationResult",
    "QuantizedFolder",
    "build_int8_folder",
    "quantize",
    "read_quantized_folder",
]

_LAZY = {
    "GateReport": ".gate",
    "GateThresholds": ".gate",
    "GateFailedError": ".quantizer",
    "QuantizationResult": ".quantizer",
    "build_int8_folder": ".quantizer",
    "quantize": ".quantizer",
    "QuantizationRecipe": ".recipe",
    "QuantizedFolder": ".recipe",
    "read_quantized_folder": ".recipe",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
