"""CPU speed paths: the CPU class and its defaults, logged once; every faster path keeps the scores."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pixie_integrations import PixieScorer
from pixie_integrations import cpu as cpu_module
from pixie_integrations.batching import bucket_shape, bucket_width
from pixie_integrations.cpu import CpuClass, CpuInfo, classify, cpu_defaults, cpu_info, log_cpu_path_once
from pixie_integrations.loading import resolve_dtype

QUERY = "what does the satellite company offer"
DOCS = [
    "satellite data analysis service " * 9,
    "ocean",
    "agriculture and defence imaging " * 3,
    "정밀 위성 영상 분석 기술",
    "a b c d e f g",
]


@pytest.mark.parametrize(
    ("arch", "flags", "expected"),
    [
        ("x86_64", {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}, CpuClass.AMX),
        ("x86_64", {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, CpuClass.AVX512_BF16),  # AMD Zen 4
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, CpuClass.AVX512),
        ("x86_64", {"avx2", "fma"}, CpuClass.AVX2),
        ("x86_64", {"sse4_2"}, CpuClass.OTHER),
        ("aarch64", {"asimd", "bf16", "i8mm"}, CpuClass.ARM),
        ("arm64", set(), CpuClass.ARM),
        ("riscv64", set(), CpuClass.OTHER),
    ],
)
def test_cpu_class_from_flags(arch: str, flags: set[str], expected: CpuClass) -> None:
    assert classify(arch, flags) is expected


def test_this_cpu_is_named_with_its_flags() -> None:
    info = cpu_info()
    assert info.model and info.logical_cpus >= 1
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert ("amx_bf16" in text) == (info.cpu_class is CpuClass.AMX)
    assert all(flag in text for flag in info.flags)
    assert info.as_dict()["class"] == info.cpu_class.value


def _fake_cpu(cpu_class: CpuClass) -> CpuInfo:
    return CpuInfo(model="Test CPU", arch="x86_64", cpu_class=cpu_class, flags=("avx2",), logical_cpus=2)


@pytest.mark.parametrize(
    ("cpu_class", "dtype"),
    [
        (CpuClass.AMX, torch.bfloat16),
        (CpuClass.AVX512_BF16, torch.bfloat16),
        (CpuClass.AVX512, torch.float32),
        (CpuClass.AVX2, torch.float32),
        (CpuClass.ARM, torch.float32),
        (CpuClass.OTHER, torch.float32),
    ],
)
def test_default_dtype_follows_the_cpu_class(
    monkeypatch: pytest.MonkeyPatch, cpu_class: CpuClass, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(cpu_module, "cpu_info", lambda: _fake_cpu(cpu_class))
    assert resolve_dtype(None, torch.device("cpu")) == dtype
    assert cpu_defaults().token_budget > 0
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32  # an explicit choice always wins


def test_the_cpu_path_is_logged_once(tiny_reranker: Path, caplog: pytest.LogCaptureFixture) -> None:
    log_cpu_path_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="pixie_integrations.cpu"):
        first = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")
        PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")
    records = [r for r in caplog.records if r.name == "pixie_integrations.cpu"]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert cpu_info().cpu_class.value in message and "float32" in message and str(first.token_budget) in message


def test_bf16_on_a_cpu_without_bf16_units_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cpu_module, "cpu_info", lambda: _fake_cpu(CpuClass.AVX2))
    log_cpu_path_once.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="pixie_integrations.cpu"):
            log_cpu_path_once("bfloat16", 1024, True, 2)
            log_cpu_path_once("bfloat16", 1024, True, 2)
    finally:
        log_cpu_path_once.cache_clear()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "slower than float32" in warnings[0].getMessage()
    assert any("class avx2" in r.getMessage() and "not measured" in r.getMessage() for r in caplog.records)


# -- shape buckets (compile=True, pack=False) ---------------------------------------------------------------------
def test_bucket_widths_step_by_at_most_half() -> None:
    widths = [bucket_width(w) for w in range(1, 3000)]
    assert widths[:16] == [16] * 16 and sorted(set(widths))[:8] == [16, 24, 32, 48, 64, 96, 128, 192]
    for w, b in zip(range(1, 3000), widths):
        assert w <= b < max(2 * w, 17)
    assert len(set(widths)) <= 16  # few shapes, so few compilations


@pytest.mark.parametrize(("rows", "width"), [(1, 5), (3, 200), (5, 100), (7, 30), (1, 2000), (40, 20)])
def test_bucket_shape_holds_the_batch_within_the_budget(rows: int, width: int) -> None:
    n_rows, n_width = bucket_shape(rows, width, 1024)
    assert n_rows >= rows and n_width >= width
    assert n_rows * n_width <= max(1024, rows * n_width)  # empty rows never push a batch past the budget


def test_padding_rows_and_columns_never_change_scores(tiny_scorer: PixieScorer) -> None:
    # The bucketed forward (extra all-pad rows, extra right padding) against the plain one, in float32: same logits.
    encoded, _ = tiny_scorer._encoder.encode([(QUERY, d) for d in DOCS], tiny_scorer.instruction)
    runner = tiny_scorer._runner
    plain = runner(encoded)
    for budget in (64, 1024, 4096):
        runner._token_budget = budget
        bucketed = runner._run_bucketed([pair.input_ids for pair in encoded])
        assert bucketed.shape == plain.shape
        assert torch.allclose(bucketed, plain, atol=1e-6)
    runner._token_budget = tiny_scorer.token_budget
    # And the unmasked right padding of a plain batch: each document alone scores as in the batch.
    alone = torch.cat([runner([pair]) for pair in encoded])
    assert torch.allclose(alone, plain, atol=1e-6)


@pytest.mark.slow
def test_compiled_scorer_matches_eager_and_logs_each_bucket_once(
    tiny_reranker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = PixieScorer(str(tiny_reranker), device="cpu", dtype="float32")
    # A distinct registry key (config override), so the shared eager model is not the compiled one.
    with caplog.at_level(logging.INFO, logger="pixie_integrations.runner"):
        compiled = PixieScorer(
            str(tiny_reranker), device="cpu", dtype="float32", compile=True, pack=False, config_kwargs={"test_copy": 1}
        )
        assert compiled.reuse_prefix is False
        first = compiled.score(QUERY, DOCS)
        again = compiled.score(QUERY, DOCS)
    assert first == pytest.approx(eager.score(QUERY, DOCS), abs=1e-5) and again == first
    compiling = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling for batch shape")]
    assert compiling and len(compiling) == len(set(compiling))  # once per bucket, none for the second call
    assert any(str(tmp_path / "inductor") in r.getMessage() for r in caplog.records)
