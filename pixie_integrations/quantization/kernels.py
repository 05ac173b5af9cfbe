"""The int8 linear layer: int8 weights (per output channel) times int8 activations (per token), in int32.

Activations are quantized per token at run time (symmetric, each row's absolute maximum maps to 127), so no
activation scale is frozen from calibration data: SmoothQuant's smoothing (:mod:`.smoothing`) moves the outlier
channels into the weights beforehand, which is what makes one scale per token good enough. The product runs in
oneDNN's int8 GEMM with prepacked weights (AVX512-VNNI, AMX-INT8 or AVX-VNNI where the CPU has them), which writes
the activations' dtype with the weight scales applied; each row is then multiplied by its own scale.

The quantize step is a small elementwise pass that eager PyTorch runs as five or six kernels, costing as much as the
GEMM saves; it is compiled once (``torch.compile``, dynamic shapes) into one fused loop. Where compiling is
impossible (no C++ compiler) the eager form runs, with the same results.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Int8Linear", "WeightScheme", "prepare_kernels", "quantize_weight"]

logger = logging.getLogger(__name__)

# torch._int_mm wants more than 16 rows on the CPU; shorter inputs are padded with zero rows (they add nothing).
_MIN_ROWS = 17


@dataclass(frozen=True)
class WeightScheme:
    """How weights are rounded: bits and granularity. The defaults are the recipe; the others exist to show that a
    damaging recipe fails the quality gate."""

    bits: int = 8
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, not {self.bits!r}")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


def quantize_weight(weight: torch.Tensor, scheme: WeightScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight transposed to (in, out), float32 scale per output channel)`` of a (out, in) weight."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if scheme.per_channel else w.abs().amax().expand(w.shape[0])
    scale = amax.clamp(min=1e-8) / scheme.qmax
    q = torch.round(w / scale[:, None]).clamp(-scheme.qmax, scheme.qmax).to(torch.int8)
    return q.t().contiguous(), scale.contiguous()


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8, stored as uint8 offset by 128 (oneDNN's x86 int8 GEMM reads unsigned activations)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-8) / 127.0
    return (torch.round(x.float() / scale) + 128).to(torch.uint8), scale


def _rescale(out: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
    return out.mul_(row_scale.to(out.dtype))


class _Fused:
    """The compiled form of the quantize step, made once per process on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    def quantize(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        if self._quantize is None:
            with self._lock:
                if self._quantize is None:
                    self._quantize = self._compile()
        return self._quantize

    @staticmethod
    def _compile() -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        try:
            quantize = torch.compile(_quantize_rows, dynamic=True)
            quantize(torch.randn(_MIN_ROWS + 3, 64))
            return quantize  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001  (no C++ toolchain, an unsupported platform: same arithmetic, unfused)
            logger.warning(
                "int8: could not compile the fused quantize step (%s: %s); running it unfused, which is slower but "
                "gives the same scores.",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            return _quantize_rows


_FUSED = _Fused()


def prepare_kernels() -> None:
    """Compile the fused quantize step now (once per process), so that the first batch does not wait for it."""
    _FUSED.quantize()


def _onednn_available() -> bool:
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack")


class Int8Linear(torch.nn.Module):
    """A bias-free or biased ``nn.Linear`` computing ``x @ W.T`` with int8 weights and per-token int8 activations.

    The weight is rounded once and prepacked for oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``, the
    kernel PyTorch's own x86 int8 path lowers to), which applies the weight scales and writes the activations' dtype
    directly; each row is then multiplied by its own activation scale. Without oneDNN, ``torch._int_mm`` (int32
    out) does the product, with the same rounding.

    Args:
        linear: The float layer to replace; its weight is rounded with ``scheme`` and not kept.
        scheme: Weight bits and granularity (default: 8 bits, one scale per output channel).
        fused: Run the quantize step compiled (default) or eagerly (same values).
    """

    def __init__(self, linear: torch.nn.Linear, scheme: WeightScheme | None = None, *, fused: bool = True) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        qweight, scale = quantize_weight(linear.weight, scheme or WeightScheme())
        # Plain attributes, not buffers: a model-wide .to(torch.bfloat16) would round the scales, and the packed
        # weight is an opaque oneDNN tensor. The layer is rebuilt from the float weights at every load.
        self.weight_scale = scale
        self._onednn = _onednn_available()
        if self._onednn:
            self._packed = torch.ops.onednn.qlinear_prepack(qweight.t().contiguous(), None)
            self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        else:
            self._packed = qweight
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(), False)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        quantize = _FUSED.quantize() if self.fused else _quantize_rows
        q, row_scale = quantize(rows)
        if self._onednn:
            out = torch.ops.onednn.qlinear_pointwise(
                q, 1.0, 128, self._packed, self.weight_scale, self._zero_points, None, 1.0, 0, x.dtype, "none", [], ""
            )
        else:
            out = self._int_mm(q) * self.weight_scale
        out = _rescale(out.to(x.dtype), row_scale)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def _int_mm(self, q: torch.Tensor) -> torch.Tensor:
        signed = (q.to(torch.int16) - 128).to(torch.int8)
        n = signed.shape[0]
        if n < _MIN_ROWS:
            signed = torch.nn.functional.pad(signed, (0, 0, 0, _MIN_ROWS - n))
        return torch._int_mm(signed, self._packed)[:n].float()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x int8"
