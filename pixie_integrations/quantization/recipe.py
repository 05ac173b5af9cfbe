"""What a quantized model folder holds and how loading turns it into an int8 model.

A folder written by ``pixie-rerank quantize`` is an ordinary checkpoint (config, tokenizer, float32 weights with the
SmoothQuant factors already folded in, so any tool loading it as a float model gets the original scores up to float
rounding) plus ``pixie_quantization.json``: the recipe (which layers become int8 and how) and the quality gate's
report. Loading rounds the listed layers' float32 weights to int8 the same way every time, so the model the gate
checked is the model every later load runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cpu import cpu_info
from .kernels import Int8Linear, WeightScheme, prepare_kernels, quantize_weight

__all__ = [
    "QUANTIZATION_FILE",
    "QuantizationRecipe",
    "QuantizedFolder",
    "apply_quantization",
    "int8_fallback_reason",
    "quantizable_linears",
    "read_quantized_folder",
    "write_quantized_folder",
]

logger = logging.getLogger(__name__)

QUANTIZATION_FILE = "pixie_quantization.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class QuantizationRecipe:
    """Which linear layers run in int8, and how their weights are rounded."""

    weight_bits: int = 8
    """8 (the recipe); 4 only to show that a damaging recipe fails the gate."""
    per_channel: bool = True
    """One weight scale per output channel (``False``: one per tensor, a damaging recipe)."""
    smooth_alpha: float | None = 0.8
    """SmoothQuant's migration strength, folded into the saved weights; ``None``: no smoothing."""
    keep: tuple[str, ...] = ()
    """Decoder layers (module names such as ``model.layers.0``) kept in float: the sensitivity pass's choice."""
    include_head: bool = False
    """Also round the score head (a damaging recipe: the head decides the score directly)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keep"] = list(self.keep)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizationRecipe:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "keep" in known:
            known["keep"] = tuple(known["keep"])
        return cls(**known)


@dataclass
class QuantizedFolder:
    """The contents of ``pixie_quantization.json``."""

    recipe: QuantizationRecipe
    report: dict[str, Any] = field(default_factory=dict)
    """The quality gate's figures and verdict (:class:`~pixie_integrations.quantization.gate.GateReport`)."""

    def summary(self) -> str:
        gate = self.report.get("gate", {})
        verdict = "passed" if gate.get("passed") else ("FAILED, written with --force" if gate else "not run")
        figures = ", ".join(f"{k} {v:.4g}" for k, v in gate.get("figures", {}).items() if isinstance(v, float))
        return f"quality gate {verdict}" + (f" ({figures})" if figures else "")


def read_quantized_folder(folder: str | os.PathLike[str]) -> QuantizedFolder | None:
    """The folder's quantization file, or ``None`` when it has none (an ordinary checkpoint)."""
    path = Path(folder) / QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r}, this version reads {FORMAT_VERSION}")
        return QuantizedFolder(recipe=QuantizationRecipe.from_dict(data["recipe"]), report=data.get("report", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} cannot be read: {exc}") from exc


def write_quantized_folder(folder: str | os.PathLike[str], contents: QuantizedFolder) -> Path:
    path = Path(folder) / QUANTIZATION_FILE
    data = {"format": FORMAT_VERSION, "recipe": contents.recipe.to_dict(), "report": contents.report}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def quantizable_linears(model: Any, recipe: QuantizationRecipe) -> list[tuple[str, Any, str, torch.nn.Linear]]:
    """``(name, parent, attribute, layer)`` of every linear layer the recipe turns into int8."""
    found = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if not isinstance(child, torch.nn.Linear):
                continue
            name = f"{parent_name}.{attr}" if parent_name else attr
            in_layers = ".layers." in f".{name}"
            kept = any(name == k or name.startswith(k + ".") for k in recipe.keep)
            if in_layers and not kept:
                found.append((name, parent, attr, child))
    return found


def apply_quantization(model: Any, recipe: QuantizationRecipe, *, fused: bool = True) -> int:
    """Replace the recipe's linear layers of ``model`` (float32 weights) with :class:`Int8Linear`; returns how many."""
    scheme = WeightScheme(bits=recipe.weight_bits, per_channel=recipe.per_channel)
    layers = quantizable_linears(model, recipe)
    for _, parent, attr, linear in layers:
        setattr(parent, attr, Int8Linear(linear, scheme, fused=fused))
    if layers and fused:
        prepare_kernels()
    head = getattr(model, "score", None)
    if recipe.include_head and isinstance(head, torch.nn.Linear):
        # The scorer computes the head itself from its float weight, so the head is rounded in place (its values
        # become those of the int8 grid): the damage a quantized head does, without a kernel for one dot product.
        qweight, scale = quantize_weight(head.weight, scheme)
        with torch.no_grad():
            head.weight.copy_((qweight.t().float() * scale[:, None]).to(head.weight.dtype))
        return len(layers) + 1
    return len(layers)


def int8_fallback_reason(device: torch.device) -> str | None:
    """Why int8 cannot run here (then the folder's float weights run instead), or ``None`` when it can."""
    if device.type != "cpu":
        return f"int8 layers run on CPUs only, and this model is on {device.type}"
    info = cpu_info()
    if not info.int8_units:
        return f"this CPU ({info.model or info.arch}) has no int8 dot-product units (AVX512-VNNI, AMX-INT8, AVX-VNNI)"
    return None
