"""The command line: the demo (the README's main job) and the top-level help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pixie_integrations.cli import main
from pixie_integrations.demo import CARD_SCORES, run_demo


def test_demo_prints_each_score_beside_the_cards(tiny_reranker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", str(tiny_reranker), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5
    scores = run_demo(str(tiny_reranker), device="cpu")
    for row, card, got in zip(rows, CARD_SCORES, scores):
        assert f"{card:8.5f}" in row and f"{got:8.5f}" in row
    assert "largest difference from the model card" in out


def test_demo_without_the_model_says_how_to_point_at_a_local_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_is_fast_and_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pixie_integrations", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for command in ("demo", "bench", "eval"):
        assert command in result.stdout
    check = "import sys, pixie_integrations.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False).stdout.strip()
        == "False"
    )


def test_quickstart_example_runs_offline(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--tiny", "--dtype", "float32"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(Path(__file__).parent.parent / "examples" / "quickstart.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "scores: [" in out and out.count("  0.") == 3 and "with a domain instruction" in out
