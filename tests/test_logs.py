"""The library's warnings in a plain script: on stderr while the application configured no logging, through the
application's configuration once it has one, and silenced by the level the docs give."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUT = "documents were longer than max_length=130 tokens"


def _script(code: str, tiny_reranker: Path) -> subprocess.CompletedProcess[str]:
    """``code`` after a score that cuts a long document (a WARNING), in a fresh interpreter."""
    body = textwrap.dedent(code) + textwrap.dedent(
        f"""
        from pixie_integrations import PixieScorer
        scorer = PixieScorer({str(tiny_reranker)!r}, device="cpu", dtype="float32", max_length=130)
        scorer.score("query", ["word " * 400])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    env["TRANSFORMERS_VERBOSITY"] = "error"  # transformers' own load bars and notes are not what is tested
    result = subprocess.run(
        [sys.executable, "-c", body], capture_output=True, text=True, check=False, timeout=120, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CUT in line]


def test_a_plain_script_sees_the_warning_once(tiny_reranker: Path) -> None:
    lines = _warnings(_script("", tiny_reranker).stderr)
    assert len(lines) == 1 and lines[0].startswith("WARNING pixie_integrations.pipeline: 1 of 1 documents")


@pytest.mark.parametrize(
    ("setup", "seen"),
    [
        ("import logging; logging.basicConfig()", "WARNING:pixie_integrations.pipeline:1 of 1"),  # the app's format
        ("import logging; logging.basicConfig(level=logging.ERROR)", None),
        ("import logging; logging.getLogger('pixie_integrations').setLevel(logging.ERROR)", None),  # the docs' way
    ],
    ids=["configured", "configured-error", "silenced"],
)
def test_a_logging_configuration_takes_over(setup: str, seen: str | None, tiny_reranker: Path) -> None:
    lines = _warnings(_script(setup, tiny_reranker).stderr)
    if seen is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(seen)  # once: not also through the package's own handler


def test_the_haystack_adapters_logger_too() -> None:
    pytest.importorskip("haystack")
    code = (
        "import logging\n"
        "import pixie_integrations.haystack as adapter\n"
        "adapter.logger.warning('visible')\n"
        "adapter.logger.info('not at the default level')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HAYSTACK_LOGGING_IGNORE_STRUCTLOG": "true"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines() == ["WARNING haystack_integrations.components.rankers.pixie: visible"]
