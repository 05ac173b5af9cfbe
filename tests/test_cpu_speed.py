"""CPU speed paths: the CPU class and its defaults, logged once; every faster path keeps the scores."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pixie_integrations import PixieScorer
from pixie_integrations import cpu as cpu_module
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
