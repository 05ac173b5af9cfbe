"""The bench's OpenVINO and ONNX Runtime peers: the same weights, scored exactly as the model card's code scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pixie_integrations.bench_peers import PEERS, PeerScorer, missing_peer_modules
from pixie_integrations.benchmark import CardReference, _systems, parse_system
from pixie_integrations.cli import main
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES


def _needs(name: str) -> None:
    missing = missing_peer_modules(name)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the bench-peers extra)")


@pytest.fixture(scope="module")
def card_scores(tiny_reranker: Path) -> list[float]:
    return CardReference(tiny_reranker, dtype="float32").score(SAMPLE_QUERIES[0], SAMPLE_DOCUMENTS[:7])


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_scores_as_the_card_does(name: str, tiny_reranker: Path, card_scores: list[float]) -> None:
    _needs(name)
    # Batches of 3 over 7 documents: full and partial batches, each padded to its own longest pair.
    peer = PeerScorer(tiny_reranker, name=name, batch_size=3)
    got = peer.score(SAMPLE_QUERIES[0], SAMPLE_DOCUMENTS[:7])
    assert len(got) == 7 and all(type(s) is float for s in got)
    diff = max(abs(a - b) for a, b in zip(got, card_scores))
    if name.endswith("fp32"):
        assert diff < 1e-4  # the same float32 computation, converted
    else:
        assert 0 < diff < 5e-2  # bf16 compute or int8 weights: close, and not secretly float32
    # One document, and a custom instruction, as the card's recipe takes them.
    reference = CardReference(tiny_reranker, dtype="float32")
    one = peer.score(SAMPLE_QUERIES[1], SAMPLE_DOCUMENTS[:1], instruction="Find it")
    expected = reference.score(SAMPLE_QUERIES[1], SAMPLE_DOCUMENTS[:1], instruction="Find it")
    assert abs(one[0] - expected[0]) < (1e-4 if name.endswith("fp32") else 5e-2)


def test_bench_runs_the_peers_next_to_the_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("openvino-fp32", "onnxruntime-fp32"):
        _needs(name)
    out = tmp_path / "bench.json"
    argv = ["bench", "--shape", "tiny", "--model-dir", str(tmp_path / "m"), "--workload", "latency", "--docs", "5"]
    argv += ["--device", "cpu", "--no-progress", "--json", str(out)]
    argv += ["--systems", "card-fp32", "openvino-fp32", "onnxruntime-fp32:batch_size=2"]
    assert main(argv) == 0
    assert "| openvino-fp32 |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["failed"] == {}
    for name in ("openvino-fp32", "onnxruntime-fp32:batch_size=2"):
        stats = result["systems"][name]
        assert stats["max_abs_score_diff_vs_card-fp32"] < 1e-4
        assert stats["load_s"] > 0 and stats["pairs_per_s"] > 0  # load_s includes the conversion
        assert stats["peak_rss_mb"] > stats["idle_rss_mb"] > 0  # its own process, its runtime in the baseline


def test_peer_settings() -> None:
    assert parse_system("openvino-bf16") == ("openvino-bf16", {})
    assert parse_system("onnxruntime-int8:batch_size=8") == ("onnxruntime-int8", {"batch_size": 8})
    with pytest.raises(ValueError, match="unknown setting 'dtype'.*batch_size"):
        parse_system("openvino-fp32:dtype=bfloat16")
    with pytest.raises(ValueError, match="batch_size"):
        parse_system("openvino-fp32:batch_size=0")
    with pytest.raises(ValueError, match="CPU only"):
        _systems(["openvino-fp32"], "unused", "cuda")["openvino-fp32"]()


def test_peer_without_its_extra_names_it() -> None:
    # sys.modules[name] = None makes find_spec and import report the package as not installed.
    code = (
        "import sys; sys.modules['openvino'] = None; from pixie_integrations.cli import main; "
        "sys.exit(main(['bench', '--preset', 'cpu', '--no-progress', '--systems', 'pixie', 'openvino-bf16']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "openvino-bf16" in lines[0] and 'pip install "pixie-integrations[bench-peers]"' in lines[0]
