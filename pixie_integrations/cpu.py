"""What this CPU can do, in one place: its model, the ISA flags that decide speed, and the defaults they call for.

The scorer's dtype, token budget and prefix reuse on CPU come from :func:`cpu_defaults`; the benchmark names the
CPU with :func:`cpu_info`. Importing this module does not import torch.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuClass", "CpuDefaults", "CpuInfo", "cpu_defaults", "cpu_info", "log_cpu_path_once", "torch_build"]

logger = logging.getLogger(__name__)

# The flags that decide how fast a transformer runs, as /proc/cpuinfo spells them (x86, then Arm).
X86_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "avx_vnni", "fma")
ARM_FLAGS = ("bf16", "i8mm", "sve", "sve2", "asimddp", "asimd")


class CpuClass(str, enum.Enum):
    """CPU classes that want different defaults, from the fastest bf16 matrix units down."""

    AMX = "amx"
    """Intel Xeon 4th gen+ (Sapphire Rapids, Emerald/Granite Rapids): AMX bf16/int8 tile units."""
    AVX512_BF16 = "avx512-bf16"
    """AVX-512 with bf16 dot products but no AMX: AMD Zen 4/5, Intel Cooper Lake."""
    AVX512 = "avx512"
    """AVX-512 without bf16 (Intel Skylake-SP to Ice Lake)."""
    AVX2 = "avx2"
    """AVX2 only: most laptops and desktops, AMD Zen 1-3."""
    ARM = "arm"
    """aarch64: AWS Graviton, Ampere, Apple silicon."""
    OTHER = "other"


@dataclass(frozen=True)
class CpuInfo:
    """The CPU this process runs on."""

    model: str
    arch: str
    cpu_class: CpuClass
    flags: tuple[str, ...]
    """Of the flags in X86_FLAGS/ARM_FLAGS, those this CPU has."""
    logical_cpus: int

    @property
    def has_bf16_matmul(self) -> bool:
        """Native bf16 matrix arithmetic (AMX or AVX512-BF16), where bfloat16 beats float32."""
        return self.cpu_class in (CpuClass.AMX, CpuClass.AVX512_BF16)

    @property
    def int8_units(self) -> tuple[str, ...]:
        """Its int8 dot-product instructions (AMX-INT8, AVX512-VNNI, AVX-VNNI; Arm's I8MM and dot product)."""
        return tuple(f for f in self.flags if f in ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp"))

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "arch": self.arch,
            "class": self.cpu_class.value,
            "flags": list(self.flags),
            "logical_cpus": self.logical_cpus,
        }


def _read_cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _lscpu_model() -> str:
    """``lscpu``'s model name (Arm boards often name their CPU only there)."""
    if shutil.which("lscpu") is None:
        return ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name" and value.strip() not in ("", "-"):
            return value.strip()
    return ""


def _sysctl_model() -> str:
    """macOS: the brand string (e.g. ``Apple M2``)."""
    try:
        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def classify(arch: str, flags: set[str]) -> CpuClass:
    """The class of a CPU from its architecture and /proc/cpuinfo flags."""
    arch = arch.lower()
    if arch in ("aarch64", "arm64") or arch.startswith("arm"):
        return CpuClass.ARM
    if arch not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return CpuClass.OTHER
    if "amx_bf16" in flags:
        return CpuClass.AMX
    if "avx512_bf16" in flags:
        return CpuClass.AVX512_BF16
    if "avx512f" in flags:
        return CpuClass.AVX512
    if "avx2" in flags:
        return CpuClass.AVX2
    return CpuClass.OTHER


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    arch = platform.machine() or "unknown"
    model, flags = _read_cpuinfo()
    model = model or _lscpu_model() or (_sysctl_model() if platform.system() == "Darwin" else "")
    model = model or platform.processor() or arch
    cpu_class = classify(arch, flags)
    known = ARM_FLAGS if cpu_class is CpuClass.ARM else X86_FLAGS
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    return CpuInfo(
        model=model,
        arch=arch,
        cpu_class=cpu_class,
        flags=tuple(f for f in known if f in flags),
        logical_cpus=logical,
    )


@dataclass(frozen=True)
class CpuDefaults:
    """What a scorer on this CPU class runs with when the caller leaves a setting to it, and why."""

    dtype: str
    token_budget: int
    reuse_prefix: bool
    pack: bool
    """Packed batches, attention per pair as blocked matrix multiplies (segment_attention), no padding."""
    measured: bool
    """Whether these defaults were measured on this class (docs/performance.md), or reasoned from another one."""
    why: str


# bfloat16 where the CPU multiplies bf16 matrices natively (AMX; AVX512-BF16, where bf16 GEMMs run 2.2x float32 on an
# AMD Zen 4), float32 elsewhere (bf16 is emulated there, slower). Budget and prefix reuse measured on AMX (budgets 512
# to 4096, reuse on/off). Packing measured on AVX512-BF16 (1.25-1.31x over padded batches in bf16 on PIXIE's shape,
# 1.14x in float32 on a 4-layer cut) and on for every class: it removes padding and the masked half of attention,
# work every CPU would do; not yet timed on the others. docs/performance.md has the figures.
def _bf16(why: str) -> CpuDefaults:
    return CpuDefaults(dtype="bfloat16", token_budget=1024, reuse_prefix=True, pack=True, measured=True, why=why)


def _fp32(why: str) -> CpuDefaults:
    return CpuDefaults(dtype="float32", token_budget=1024, reuse_prefix=True, pack=True, measured=False, why=why)


_NO_BF16 = "no bf16 instructions: bfloat16 would be emulated, slower than float32"
_DEFAULTS = {
    CpuClass.AMX: _bf16("AMX tiles run bfloat16 matrix multiplies ~3x faster than float32"),
    CpuClass.AVX512_BF16: _bf16("AVX512-BF16 runs bfloat16 matrix multiplies ~2.2x faster than float32"),
    CpuClass.AVX512: _fp32(_NO_BF16),
    CpuClass.AVX2: _fp32(_NO_BF16),
    CpuClass.ARM: _fp32("bf16 speed on Arm varies by core and torch build; float32 is the safe choice"),
    CpuClass.OTHER: _fp32("unknown CPU: float32"),
}


def cpu_defaults(info: CpuInfo | None = None) -> CpuDefaults:
    """The scorer's defaults for a CPU (this one when ``info`` is ``None``)."""
    return _DEFAULTS[(info or cpu_info()).cpu_class]


@functools.cache
def log_cpu_path_once(dtype: str, token_budget: int, reuse_prefix: bool, threads: int, pack: bool = False) -> None:
    """Say once per process (per distinct choice) which CPU path runs and why."""
    info = cpu_info()
    defaults = cpu_defaults(info)
    flags = ", ".join(info.flags) or "none of note"
    logger.info(
        "CPU %s (class %s; %s): %s, %s batches, token budget %d, prefix reuse %s, %d threads. Defaults for this "
        "class: %s, %s batches, budget %d (%s; %s).",
        info.model,
        info.cpu_class.value,
        flags,
        dtype,
        "packed" if pack else "padded",
        token_budget,
        "on" if reuse_prefix else "off",
        threads,
        defaults.dtype,
        "packed" if defaults.pack else "padded",
        defaults.token_budget,
        defaults.why,
        "measured on this class" if defaults.measured else "not measured on this class",
    )
    if dtype in ("bfloat16", "float16") and not info.has_bf16_matmul:
        logger.warning(
            "%s on a CPU without bf16 matrix units (%s, class %s) is emulated and usually slower than float32; "
            "leave dtype unset to get float32 here.",
            dtype,
            info.model,
            info.cpu_class.value,
        )


def torch_build() -> dict[str, object]:
    """The torch build's version, BLAS/oneDNN libraries and the CPU kernels it dispatches to (imports torch)."""
    import torch

    build: dict[str, object] = {
        "version": torch.__version__,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version (\d+(?:\.\d+)*)", config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v(\d+(?:\.\d+)*)", config)
    if mkl:
        build["mkl_version"] = mkl.group(1)
    if onednn:
        build["onednn_version"] = onednn.group(1)
    return build
