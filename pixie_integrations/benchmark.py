"""``pixie-rerank bench``, by its first import path: the bench now lives in :mod:`pixie_integrations.bench`.

Every public name this module had stays importable from here (scripts and notebooks use
``from pixie_integrations.benchmark import build_workload, run_benchmark``); new code may import from
``pixie_integrations.bench`` or its modules.
"""

from __future__ import annotations

from .bench import (
    SHAPES,
    WORKLOADS,
    CardReference,
    Workload,
    WorkloadSpec,
    build_random_model,
    build_workload,
    format_table,
    kendall_tau,
    parse_system,
    register,
    run_benchmark,
)
from .bench.systems import ScoreFn, build_systems
from .bench.timing import Progress

__all__ = [
    "SHAPES",
    "WORKLOADS",
    "CardReference",
    "ScoreFn",
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

# Two names of the module before the split that tests import (now public in pixie_integrations.bench.*).
_Progress = Progress
_systems = build_systems
