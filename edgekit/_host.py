"""What this host is, as far as numbers depend on it: the CPU features int8 kernels choose by.

onnxruntime's x86 int8 kernels take a different instruction path with and without VNNI (without it
16-bit intermediate sums can saturate), so an int8 parity figure is a claim about a kind of CPU. The
manifest records this next to each figure, and the test suite prints it in its header.
"""

from __future__ import annotations

import platform
from functools import cache

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


@cache
def cpu_flags() -> tuple[str, ...]:
    """The int8-relevant CPU flags of this host (Linux ``/proc/cpuinfo``; empty elsewhere)."""
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
