"""The command line: the demo (the README's main job) and the top-level help."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pixie_integrations.cli import main
from pixie_integrations.demo import CARD_SCORES, run_demo
from pixie_integrations.install import install_hint


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


# -- user mistakes: one line on stderr, a non-zero exit, and the fix -------------------------------------------------
DATA = Path(__file__).parent / "data" / "beir_tiny"
ROOT = Path(__file__).resolve().parent.parent


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--device", "gpu"], "use cuda"),
        (["serve", "--device", "gpu"], "use cuda"),
        (["eval", "--data", "d", "--output", "o", "--device", "gpu"], "use cuda"),
        (["bench", "--device", "gpu"], "use cuda"),
        (["demo", "--dtype", "flaot32"], "did you mean float32?"),
        (["serve", "--dtype", "flaot32"], "did you mean float32?"),
        (["eval", "--data", "d", "--output", "o", "--dtype", "flaot32"], "did you mean float32?"),
        (["bench", "--systems", "pixie:dtype=flaot32"], "did you mean float32?"),
        (["bench", "--systems", "pixie:token_budjet=10"], "settings are key=value pairs of aggregate, attn_implementation"),
        (["bench", "--systems", "warp-drive"], "choose from card-fp32, card-bf16, pixie"),
        (["bench", "--systems", "pixie:token_budget=0"], "expected a positive integer"),
        (["eval", "--data", "d"], "required: --output"),
    ],
)
def test_usage_mistakes_are_one_line_with_the_fix(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert line.startswith(f"pixie-rerank {argv[0]}: error:") and expected in line
    assert f"see pixie-rerank {argv[0]} --help" in line and not captured.out


@pytest.mark.parametrize("command", ["demo", "serve", "eval", "bench"])
def test_cuda_on_a_machine_without_it_is_refused_before_loading(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    extra = ["--data", "d", "--output", "o"] if command == "eval" else []
    with pytest.raises(SystemExit) as exit_info:
        main([command, *extra, "--device", "cuda"])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'cuda' is not available" in line and "--device cpu" in line


def test_missing_model_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["bench", "--model", str(tmp_path / "missing"), "--systems", "pixie", "--no-progress"],
        ["demo", "--model", str(tmp_path / "missing"), "--device", "cpu"],
    ):
        assert main(argv) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "does not exist" in line and "--model" in line


@pytest.fixture(scope="module")
def not_a_reranker(tmp_path_factory: pytest.TempPathFactory, tiny_reranker: Path) -> Path:
    """A checkpoint that loads but is no reranker: the tiny model turned into a 2-label classifier."""
    folder = tmp_path_factory.mktemp("two-labels")
    shutil.copytree(tiny_reranker, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.pop("num_labels", None)
    config.update(id2label={"0": "no", "1": "yes"}, label2id={"no": 0, "yes": 1})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(command: str, model: Path, *extra: str) -> list[str]:
    """``command`` on ``model``, made as small and quick as it goes (bench: one system, 2 pairs, no memory runs)."""
    tail = {
        "demo": ["--device", "cpu"],
        "serve": ["--device", "cpu", "--port", str(_free_port())],
        "eval": ["--data", str(DATA), "--output", "OUT", "--device", "cpu", "--no-plot", "--no-progress"],
        "bench": ["--device", "cpu", "--queries", "1", "--docs", "2", "--no-progress", "--no-memory"],
        "quantize": ["--data", str(DATA), "--output", "OUT", "--no-progress"],
    }[command]
    return [command, "--model", str(model), *tail, *extra]


def _the_error_line(err: str) -> str:
    """The one error line of a failed command (other lines, such as a dataset's warnings, may come before)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("pixie-rerank: error: "), err
    return errors[0]


@pytest.mark.parametrize("command", ["demo", "serve", "eval", "bench", "quantize"])
def test_a_folder_that_is_not_a_reranker_is_one_line(
    command: str, not_a_reranker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in _command(command, not_a_reranker)]
    if command == "bench":
        argv += ["--systems", "pixie", "pixie-fp32"]
    assert main(argv) == 2
    line = _the_error_line(capsys.readouterr().err)
    assert f"{str(not_a_reranker)!r} is not a reranker" in line and "num_labels=2" in line
    if command == "bench":
        assert line.startswith("pixie-rerank: error: no system loaded: pixie: ") and "; pixie-fp32: " in line


@pytest.mark.parametrize(
    ("command", "setting"),
    [("serve", ["--max-length", "5"]), ("eval", ["--max-length", "5"]), ("bench", ["--systems", "pixie:max_length=5"])],
)
def test_settings_that_cannot_work_are_one_line(
    command: str, setting: list[str], tiny_reranker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in _command(command, tiny_reranker, *setting)]
    assert main(argv) == 2
    line = _the_error_line(capsys.readouterr().err)
    assert "max_length=5 cannot hold the template" in line


def test_not_a_reranker_is_a_load_error_and_still_a_value_error(not_a_reranker: Path) -> None:
    from pixie_integrations import ModelLoadError, NotARerankerError, PixieScorer

    with pytest.raises(NotARerankerError) as raised:
        PixieScorer(str(not_a_reranker), device="cpu")
    assert isinstance(raised.value, ModelLoadError) and isinstance(raised.value, ValueError)  # code catching either


def test_the_real_entry_point_fails_in_one_line(not_a_reranker: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pixie_integrations", "demo", "--model", str(not_a_reranker), "--device", "cpu"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "is not a reranker" in line and "Give the folder of a reranker checkpoint" in line
    assert result.stdout.splitlines() == [f"model: {not_a_reranker}  dtype: float32"]  # printed before the load


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--dtyp", "float32"],
        ["serve", "--dtyp", "float32"],
        ["eval", "--data", "d", "--output", "o", "--dtyp", "float32"],
        ["eval", "--data", "d", "--output", "o", "--cand", "5"],
        ["bench", "--dev", "cpu"],
        ["quantize", "--data", "d", "--output", "o", "--calibration-q", "4"],
        ["--verb", "demo"],
    ],
    ids=["demo", "serve", "eval", "eval-candidates", "bench", "quantize", "top-level"],
)
def test_abbreviated_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # argparse would take --dtyp as --dtype: a typo then works until an option that shares the prefix is added.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "unrecognized arguments" in line or "unrecognized" in line, line


def test_every_parser_in_the_repository_refuses_abbreviations() -> None:
    import ast

    for path in [*ROOT.glob("examples/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("pixie_integrations/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "ArgumentParser"
            ):
                if path.name == "cli.py" and getattr(node.func, "id", "") == "ArgumentParser":
                    continue  # the package's own parser class, which refuses them by default
                keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert keywords.get("allow_abbrev") is False, f"{path.relative_to(ROOT)}:{node.lineno}"


def test_bench_without_its_extra_names_it() -> None:
    # sys.modules[name] = None makes the import fail as if the package were not installed.
    code = (
        "import sys; sys.modules['sentence_transformers'] = None; from pixie_integrations.cli import main; "
        "sys.exit(main(['bench', '--preset', 'cpu', '--no-progress']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert install_hint("bench") in line and "--systems pixie" in line


def test_bench_help_says_how_to_install_its_extras_and_how_long_the_cpu_preset_takes() -> None:
    from pixie_integrations.cli import build_parser

    parser = build_parser()
    (bench,) = [a.choices["bench"] for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = " ".join(bench.format_help().split())
    assert install_hint("bench") in text and install_hint("bench-peers") in text
    preset = "about 10-15 minutes on 2 cores"  # one wording, in the help and in the docs
    assert preset in text
    assert preset in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")


def test_ctrl_c_during_eval_exits_quietly_and_the_rerun_resumes(
    tiny_reranker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from pixie_integrations.evaluation import scoring as runner
    from pixie_integrations.evaluation.cache import ScoreCache
    from pixie_integrations.scorer import PixieScorer

    real = PixieScorer.score_pairs
    sizes: list[int] = []

    def interrupted_on_third_call(self: PixieScorer, pairs: list[tuple[str, str]], **kwargs: object) -> list[float]:
        sizes.append(len(pairs))
        if len(sizes) == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of scoring
        return real(self, pairs, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PixieScorer, "score_pairs", interrupted_on_third_call)
    out = tmp_path / "out"
    argv = ["eval", "--data", str(DATA), "--model", str(tiny_reranker), "--output", str(out)]
    argv += ["--device", "cpu", "--dtype", "float32", "--no-plot", "--no-progress"]
    assert main(argv) == 130
    line = _one_error_line(capsys.readouterr().err)
    assert "interrupted" in line and "run the same command again to resume" in line
    # On a CPU each model call scores a few dozen pairs and commits them: the progress bar and the cache move.
    assert sizes[:2] == [runner._CPU_CALL_PAIRS] * 2
    with ScoreCache(out / "scores.sqlite") as cache:
        assert cache.count() == 2 * runner._CPU_CALL_PAIRS

    monkeypatch.setattr(PixieScorer, "score_pairs", real)
    assert main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]  # --no-plot: no chart, and the last line names none
    assert last.startswith(f"Written to {out}: results.md, results.json and one folder per model")
    assert not (out / "ndcg.png").exists()
    (model_metrics,) = [p for p in out.glob("*/metrics.json") if not p.parent.name.startswith("_")]  # not _first_stage
    metrics = json.loads(model_metrics.read_text())
    assert metrics["cache_hits"] == 2 * runner._CPU_CALL_PAIRS
    assert metrics["pairs_scored"] == metrics["pairs"] - 2 * runner._CPU_CALL_PAIRS


def test_offline_hub_load_fails_fast_and_once(tmp_path: Path) -> None:
    import os
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    # An empty cache and a Hub endpoint nobody listens on: what a machine without network sees.
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pixie_integrations", "demo", "--model", "someone/some-reranker", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "someone/some-reranker" in line and "Retrying" not in result.stderr
    assert elapsed < 20  # the hub client's own retries alone take about 25 s


def test_cli_logging_keeps_download_bars_and_hides_weight_loading_bars() -> None:
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    from pixie_integrations.cli import configure_logging

    try:
        configure_logging(verbose=False)
        assert not hub_utils.are_progress_bars_disabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_bench_progress_ticks_during_a_long_call(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from pixie_integrations.benchmark import _Progress

    progress = _Progress(2, enabled=True)
    try:
        progress.doing("card-bf16, query 1/2")
        time.sleep(2.3)
        assert progress.bar.postfix is not None and "card-bf16, query 1/2 2s" in progress.bar.postfix
        progress.done()
        assert progress.bar.n == 1
    finally:
        progress.close()


def test_gpu_script_stops_without_a_gpu(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # as on a machine without a driver or a GPU
    (fake / "nvidia-smi").chmod(0o755)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    assert "no NVIDIA GPU" in _one_error_line(result.stderr)
    assert not (tmp_path / "runs").exists()
