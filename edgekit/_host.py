"""What this host is, as far as numbers depend on it: the CPU features int8 kernels choose by.

onnxruntime's x86 int8 kernels take a different instruction path with and without VNNI (without it
16-bit intermediate sums can saturate), so an int8 parity figure is a claim about a kind of CPU. The
manifest records this next to each figure, and the test suite prints it in its header.
"""

from __future__ import annotations

import platform
from functools import cache

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


# numpy's names for them, as its runtime dispatch detects them through CPUID
_NUMPY_NAMES = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI", "avx_vnni": "AVX_VNNI"}


@cache
def cpu_flags() -> tuple[str, ...]:
    """The int8-relevant CPU features this process sees.

    numpy's runtime dispatch asks CPUID, as onnxruntime's kernels do, so an emulated CPU (QEMU as a
    Haswell) reports what it emulates; ``/proc/cpuinfo`` always describes the real host and is only
    the fallback.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        features = None
    if features and any(features.values()):
        return tuple(flag for flag, name in _NUMPY_NAMES.items() if features.get(name))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in INT8_FLAGS if flag in present)
    except OSError:
        pass
    return ()


def has_vnni() -> bool | None:
    """True or False on x86 Linux hosts, None where it cannot be told."""
    flags = cpu_flags()
    if not flags:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


def describe_cpu() -> str:
    """For example ``x86_64 avx2 avx512f avx512_vnni`` or ``x86_64 avx2 (no VNNI)``."""
    machine = platform.machine() or "unknown CPU"
    flags = cpu_flags()
    if not flags:
        return machine
    return " ".join((machine, *flags)) + ("" if has_vnni() else " (no VNNI)")
