"""The bench's OpenVINO and ONNX Runtime peers: the same weights, scored exactly as the model card's code scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pixie_integrations.bench import kendall_tau
from pixie_integrations.bench_peers import PEERS, PeerScorer, missing_peer_modules
from pixie_integrations.benchmark import CardReference, _systems, parse_system
from pixie_integrations.cli import main
from pixie_integrations.install import install_hint
from pixie_integrations.template import format_document, format_query
from pixie_integrations.testing import SAMPLE_DOCUMENTS, SAMPLE_QUERIES


def _needs(name: str) -> None:
    missing = missing_peer_modules(name)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the bench-peers extra)")


@pytest.fixture(scope="module")
def card_scores(tiny_reranker: Path) -> list[float]:
    return CardReference(tiny_reranker, dtype="float32").score(SAMPLE_QUERIES[0], SAMPLE_DOCUMENTS[:7])


@pytest.mark.parametrize("name", sorted(name for name, spec in PEERS.items() if not spec.static_int8))
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
    assert "openvino-bf16" in lines[0] and install_hint("bench-peers") in lines[0]


def test_w8a8_peer_calibrates_on_the_pairs_given_and_scores_close_to_float32(
    tiny_reranker: Path, card_scores: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs("openvino-w8a8")
    import nncf

    calls: list[dict[str, object]] = []
    real_quantize = nncf.quantize

    def spy(model: object, dataset: nncf.Dataset, **kwargs: object) -> object:
        calls.append({"samples": list(dataset.get_inference_data()), **kwargs})
        return real_quantize(model, dataset, **kwargs)

    monkeypatch.setattr(nncf, "quantize", spy)
    # Calibrated on the other queries' pairs, scored on the first query's: disjoint.
    calibration = [(q, d) for q in SAMPLE_QUERIES[1:] for d in SAMPLE_DOCUMENTS]
    peer = PeerScorer(tiny_reranker, name="openvino-w8a8", calibration=calibration, calibration_pairs=8)
    assert peer.batch_size == 1  # one pair per call, its default
    (call,) = calls
    assert call["model_type"] == nncf.ModelType.TRANSFORMER and call["subset_size"] == 8
    assert call["advanced_parameters"].smooth_quant_alphas.matmul > 0  # SmoothQuant on
    # Each sample is one pair, tokenized as it is scored (no padding).
    samples = call["samples"]
    assert len(samples) == 8
    expected = peer.tokenizer(format_query(SAMPLE_QUERIES[1]), format_document(SAMPLE_DOCUMENTS[0]), truncation=True)
    assert samples[0]["input_ids"].tolist() == [expected["input_ids"]]
    assert all(sample["attention_mask"].all() for sample in samples)

    got = peer.score(SAMPLE_QUERIES[0], SAMPLE_DOCUMENTS[:7])
    assert len(got) == 7 and all(type(s) is float for s in got)
    diff = max(abs(a - b) for a, b in zip(got, card_scores))
    tau = kendall_tau(got, card_scores)
    print(f"openvino-w8a8 vs float32 on random tiny weights: max |diff| {diff:.2e}, Kendall tau {tau:.3f}")
    assert 0 < diff < 5e-2  # int8 activations: close, and not secretly float32
    assert tau > 0  # random weights have no outlier features: the real checkpoint's agreement is not shown here


def test_w8a8_peer_needs_calibration_pairs(tiny_reranker: Path) -> None:
    _needs("openvino-w8a8")
    with pytest.raises(ValueError, match="openvino-w8a8 calibrates on"):
        PeerScorer(tiny_reranker, name="openvino-w8a8")


def test_w8a8_settings() -> None:
    assert parse_system("openvino-w8a8:calibration_pairs=16") == ("openvino-w8a8", {"calibration_pairs": 16})
    assert parse_system("openvino-w8a8:batch_size=4,calibration_pairs=8")[1] == {
        "batch_size": 4,
        "calibration_pairs": 8,
    }
    with pytest.raises(ValueError, match="calibration_pairs"):
        parse_system("openvino-w8a8:calibration_pairs=0")
    with pytest.raises(ValueError, match="unknown setting 'calibration_pairs'.*batch_size"):
        parse_system("openvino-int8:calibration_pairs=8")  # only a calibrated peer takes it


def test_bench_runs_w8a8_end_to_end_calibrated_on_pairs_it_does_not_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs("openvino-w8a8")
    out = tmp_path / "bench.json"
    argv = ["bench", "--shape", "tiny", "--model-dir", str(tmp_path / "m"), "--queries", "2", "--docs", "5"]
    argv += ["--device", "cpu", "--no-progress", "--json", str(out)]
    argv += ["--systems", "card-fp32", "openvino-w8a8:calibration_pairs=8"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "| openvino-w8a8:calibration_pairs=8 |" in printed.out
    assert "Statistics collection" not in printed.out  # NNCF's progress goes to stderr, not into the table
    result = json.loads(out.read_text())
    assert result["failed"] == {}
    # 2 of beir's 20 queries scored: the 8 calibration pairs come from the next queries, none of them scored.
    assert result["calibration"]["pairs"] == 8 and result["calibration"]["pairs_also_scored"] == 0
    stats = result["systems"]["openvino-w8a8:calibration_pairs=8"]
    assert stats["load_s"] > 0 and stats["pairs_per_s"] > 0  # load_s includes conversion and calibration
    assert 0 < stats["max_abs_score_diff_vs_card-fp32"] < 5e-2
    assert -1 <= stats["kendall_tau_vs_card-fp32"] <= 1  # reported; random weights say little about the real model
    assert stats["peak_rss_mb"] > stats["idle_rss_mb"] > 0  # calibrated in its own process too
