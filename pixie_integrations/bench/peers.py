"""The bench's peers: the same checkpoint run by OpenVINO or ONNX Runtime, scored exactly as the model card scores.

Each peer converts the checkpoint's ``Qwen3ForSequenceClassification`` (loaded in float32, the same weights every
other system loads) in this process: ``openvino.convert_model`` for OpenVINO, ``torch.onnx.export`` to a temporary
folder for ONNX Runtime. The whole seq-cls model is converted with ``input_ids`` and ``attention_mask`` as inputs
(batch and sequence dynamic), so the card's padding and its "logit at the last real token" stay inside the graph.
Pairs are formatted and tokenized as :class:`~pixie_integrations.bench.systems.CardReference` does (plain text pairs,
padded, in the caller's order), ``batch_size`` pairs per call, and the score is the sigmoid of the one logit.
Conversion happens in the constructor, so the bench counts it in ``load_s``.

``openvino-w8a8`` is what a CPU user picking OpenVINO for int8 would run: static int8 weights *and* activations,
``nncf.quantize`` with the transformer model type and SmoothQuant, calibrated on (query, document) pairs handed to
the constructor (``calibration``, the first ``calibration_pairs`` of them, each formatted and tokenized exactly as it
is scored, one pair per calibration sample), and one pair per call. Its calibration is part of its load, so of
``load_s``. The bench calibrates it on its own workload's pairs: pairs of queries it does not score when the workload
has queries left over, else the very pairs it scores, which flatters it (its activation ranges are then fitted to
the inputs it is judged on).

Needs the ``bench-peers`` extra (:func:`pixie_integrations.install.install_hint` says how).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..template import DEFAULT_INSTRUCTION, format_document, format_query

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CALIBRATION_PAIRS", "PEERS", "PeerScorer", "PeerSpec", "missing_peer_modules"]

logger = logging.getLogger(__name__)


DEFAULT_BATCH_SIZE = 4
"""Pairs per call: what served these runtimes best on CPU when tried with sentence-transformers' backends."""
DEFAULT_CALIBRATION_PAIRS = 32
"""Pairs a calibrated peer calibrates on. Bounded: OpenVINO's W8A8 calibration of PIXIE's float32 checkpoint with
NNCF's default subset (300 samples) took about 10 minutes and 18 GB of resident memory."""


@dataclass(frozen=True)
class PeerSpec:
    """One peer configuration: the runtime, how the converted model is changed, and what the runtime computes in."""

    runtime: str
    """``"openvino"`` or ``"onnxruntime"``."""
    modules: tuple[str, ...]
    """Python modules it needs (all in the bench-peers extra)."""
    precision: str | None = None
    """OpenVINO ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``); ``None``: the runtime's default for this CPU."""
    int8: bool = False
    """Int8 weights: NNCF weight-only compression (OpenVINO) or dynamic quantization (ONNX Runtime)."""
    static_int8: bool = False
    """Int8 weights and activations, static (OpenVINO): ``nncf.quantize`` with SmoothQuant, calibrated on pairs."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Pairs per call unless the scorer is given another."""


PEERS: dict[str, PeerSpec] = {
    "openvino-fp32": PeerSpec("openvino", ("openvino",), precision="f32"),
    "openvino-bf16": PeerSpec("openvino", ("openvino",), precision="bf16"),
    # Int8 weights, activations in the CPU's default inference precision (bf16 where the CPU has bf16 units).
    "openvino-int8": PeerSpec("openvino", ("openvino", "nncf"), int8=True),
    # Int8 weights and activations (W8A8), SmoothQuant, calibrated; one pair per call (fastest for it on an Ice Lake
    # host: 6.32x the card's float32 path there).
    "openvino-w8a8": PeerSpec("openvino", ("openvino", "nncf"), static_int8=True, batch_size=1),
    "onnxruntime-fp32": PeerSpec("onnxruntime", ("onnxruntime", "onnx", "onnxscript")),
    "onnxruntime-int8": PeerSpec("onnxruntime", ("onnxruntime", "onnx", "onnxscript"), int8=True),
}


def missing_peer_modules(name: str) -> list[str]:
    """The modules peer ``name`` needs that are not installed."""
    return [module for module in PEERS[name].modules if importlib.util.find_spec(module) is None]


class PeerScorer:
    """One checkpoint, converted for a peer runtime, scoring (query, documents) as the card's code does.

    Args:
        path: Checkpoint folder (a Qwen3 seq-cls model with one logit, and its tokenizer).
        name: A key of :data:`PEERS`.
        batch_size: Pairs per call of the runtime (default: the peer's, :attr:`PeerSpec.batch_size`).
        calibration: (query, document) pairs a calibrated peer (``openvino-w8a8``) calibrates on, formatted with the
            default instruction; the others ignore them.
        calibration_pairs: How many of ``calibration`` it uses (the first ones).

    Raises:
        ValueError: A calibrated peer without calibration pairs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        batch_size: int | None = None,
        calibration: Sequence[tuple[str, str]] = (),
        calibration_pairs: int = DEFAULT_CALIBRATION_PAIRS,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.spec = PEERS[name]
        self.batch_size = batch_size or self.spec.batch_size
        self.calibration = list(calibration[:calibration_pairs]) if self.spec.static_int8 else []
        if self.spec.static_int8 and not self.calibration:
            raise ValueError(f"{name} calibrates on (query, document) pairs: pass calibration=[...]")
        self.tokenizer = AutoTokenizer.from_pretrained(os.fspath(path))
        model = AutoModelForSequenceClassification.from_pretrained(os.fspath(path), dtype=torch.float32).eval()
        example = self.tokenizer(
            [format_query("query")] * 2, [format_document("a document"), "b"], padding=True, return_tensors="pt"
        )
        inputs = {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}
        with _quiet(), torch.no_grad():
            if self.spec.runtime == "openvino":
                self._run = self._openvino(_logits_module(model), inputs)
            else:
                self._run = self._onnxruntime(_logits_module(model), inputs)

    def _openvino(self, module: Any, inputs: dict[str, Any]) -> Any:
        import openvino

        converted = openvino.convert_model(module, example_input=inputs)
        if self.spec.int8:
            import nncf

            with _quiet():  # again: importing nncf set its logger's level
                converted = nncf.compress_weights(converted)  # int8 asymmetric, per channel: NNCF's default
        if self.spec.static_int8:
            converted = self._quantize_static(converted)
        # OpenVINO pins its threads to cores by default, which slows every torch system in the same process 4-6x on
        # a 2-core machine (measured); unpinned, OpenVINO's own speed is the same.
        config: dict[str, Any] = {"ENABLE_CPU_PINNING": False}
        if self.spec.precision:
            config["INFERENCE_PRECISION_HINT"] = self.spec.precision
        compiled = openvino.compile_model(converted, "CPU", config)
        logger.info(
            "OpenVINO: precision %s, %s threads",
            compiled.get_property("INFERENCE_PRECISION_HINT"),
            compiled.get_property("INFERENCE_NUM_THREADS"),
        )
        return lambda features: compiled(features)[0]

    def _quantize_static(self, converted: Any) -> Any:
        """Int8 weights and activations: ``nncf.quantize`` for a transformer (SmoothQuant on the MatMuls' inputs at
        NNCF's alpha, 0.95; the mixed preset: symmetric weights, asymmetric activations) on the calibration pairs."""
        import nncf

        samples = [self._features([(format_query(q), format_document(d))]) for q, d in self.calibration]
        parameters = nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.95)
        )
        with _quiet():  # again: importing nncf set its logger's level
            return nncf.quantize(
                converted,
                nncf.Dataset(samples),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(samples),
                advanced_parameters=parameters,
            )

    def _features(self, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Formatted (text A, text B) pairs tokenized as one padded batch, as the card's code tokenizes them."""
        features = self.tokenizer(
            [a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True, return_tensors="np"
        )
        return {"input_ids": features["input_ids"], "attention_mask": features["attention_mask"]}

    def _onnxruntime(self, module: Any, inputs: dict[str, Any]) -> Any:
        import onnxruntime
        import torch

        batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
        with tempfile.TemporaryDirectory(prefix="pixie-bench-onnx-", ignore_cleanup_errors=True) as folder:
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                module,
                (),
                str(path),
                kwargs=inputs,
                input_names=list(inputs),
                output_names=["logits"],
                dynamic_shapes={key: {0: batch, 1: length} for key in inputs},
                dynamo=True,
                external_data=True,  # PIXIE's float32 weights pass protobuf's 2 GB limit
                verbose=False,
            )
            if self.spec.int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantized = Path(folder) / "model-int8.onnx"
                quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, use_external_data_format=True)
                path = quantized
            # The session reads the weights into memory now, so the folder can go.
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda features: session.run(None, features)[0]

    def score(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """The card's recipe: format each pair, tokenize ``batch_size`` pairs as a padded text pair, sigmoid."""
        import torch

        text_a = format_query(query, instruction if instruction is not None else DEFAULT_INSTRUCTION)
        out: list[float] = []
        for start in range(0, len(documents), self.batch_size):
            batch = [(text_a, format_document(d)) for d in documents[start : start + self.batch_size]]
            logits = self._run(self._features(batch))
            out += [float(s) for s in torch.sigmoid(torch.from_numpy(logits)).reshape(-1).tolist()]
        return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Conversion without its chatter: tracer warnings about Python branches on shapes (the traced mask path is the
    one every batch takes), torch.onnx's notes on absent torchvision ops, NNCF's statistics table, ONNX Runtime's
    advice (logged on the root logger) to pre-process before quantizing. NNCF's progress bars stay, on stderr: it
    draws them on stdout, where the bench prints its table."""
    names = ("torch.onnx", "nncf", "")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            for name in names:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _logits_module(model: Any) -> Any:
    """The seq-cls model as a module of (input_ids, attention_mask) -> logits, with no cache (nothing to convert)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return Logits()
