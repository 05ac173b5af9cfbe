"""``pixie-rerank bench``: PixieScorer against the model card's own path, on the same weights, in the same run.

Workloads: ``beir`` (20 queries x 100 documents, log-normal lengths with a 180-token median, as in BEIR reranking),
``latency`` (1 x 100) and ``long`` (documents up to 8k tokens). A random-weight model of PIXIE's exact shape
(``--shape pixie``; same FLOPs as the real one) runs with no download; ``--model`` times a real checkpoint instead.
``--preset cpu`` sizes a run for a CPU (PIXIE's shape, 2 queries x 12 documents: about 10-15 minutes on 2 cores).
The 4-layer cut (``--shape pixie-4l``) is quicker but overstates CPU speed-ups: whatever runs outside the decoder
layers, and the last layer's shortcut (it runs for each pair's last token only), weighs 7x more against 4 layers
than 28. The card-* systems need sentence-transformers (the bench extra); the OpenVINO and ONNX Runtime peers on the
same weights (openvino-fp32, openvino-bf16, openvino-int8, openvino-w8a8, onnxruntime-fp32, onnxruntime-int8) need
the bench-peers extra. openvino-w8a8 (static int8 weights and activations, NNCF with SmoothQuant) calibrates on 32
of the workload's pairs (openvino-w8a8:calibration_pairs=16), from queries the run does not score when the workload
has any left (--preset cpu does), else the scored pairs.
Figures and how to read them:
https://github.com/telepix-integrations/pixie-integrations/blob/main/docs/performance.md

Importable: :func:`run_benchmark` returns the same dictionary the command writes as JSON.

Modules: :mod:`.workloads` (workloads, random models of named shapes), :mod:`.systems` (system names, the model
card's code, factories), :mod:`.peers` (OpenVINO and ONNX Runtime on the same weights), :mod:`.timing` (the
interleaved timed run, the progress bar), :mod:`.memory` (peak memory per system, each in a process of its own),
:mod:`.report` (ratios, ranking agreement, the machine, the table), :mod:`.run` (:func:`run_benchmark`) and
:mod:`.cli` (the subcommand). :mod:`pixie_integrations.benchmark` re-exports the public names.
"""

from __future__ import annotations

from .cli import register
from .report import format_table, kendall_tau
from .run import run_benchmark
from .systems import CardReference, parse_system
from .workloads import SHAPES, WORKLOADS, Workload, WorkloadSpec, build_random_model, build_workload

__all__ = [
    "SHAPES",
    "WORKLOADS",
    "CardReference",
    "Workload",
    "WorkloadSpec",
    "build_random_model",
    "build_workload",
    "format_table",
    "kendall_tau",
    "parse_system",
    "register",
    "run_benchmark",
]
