"""Shared fixtures: tiny random checkpoints built once per session by the package's own builder (no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pixie_integrations import PixieScorer
from pixie_integrations.testing import (
    build_tiny_encoder_reranker,
    build_tiny_qwen3_reranker_pair,
    build_tiny_reranker,
)


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PIXIE-shaped Qwen3 seq-cls checkpoint folder."""
    return build_tiny_reranker(tmp_path_factory.mktemp("tiny-pixie"), seed=0)


@pytest.fixture(scope="session")
def tiny_reranker_no_pad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same shape, with no pad_token_id in its config."""
    return build_tiny_reranker(tmp_path_factory.mktemp("tiny-pixie-nopad"), seed=1, pad_token_id=False)


@pytest.fixture(scope="session")
def tiny_qwen3_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(causal LM, seq-cls conversion) of the same tiny Qwen3-Reranker weights."""
    return build_tiny_qwen3_reranker_pair(tmp_path_factory.mktemp("tiny-qwen3-reranker"), seed=2)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT cross-encoder checkpoint folder."""
    return build_tiny_encoder_reranker(tmp_path_factory.mktemp("tiny-encoder"), seed=3)


@pytest.fixture(scope="session")
def tiny_scorer(tiny_reranker: Path) -> PixieScorer:
    """A float32 CPU scorer over the tiny PIXIE-shaped checkpoint (shared by every test)."""
    return PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for the whole session (2 CPUs, this machine only), shut down at the end."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


ROOT = Path(__file__).resolve().parents[1]


def _run_example(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this checkout's package
    result = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def run_example() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``python examples/<script> <args>`` from this checkout, offline, and checks that it exited 0."""
    return _run_example
