"""What this CPU reports (Linux ``/proc/cpuinfo``), for choices made at run time and for figures."""

from __future__ import annotations

import functools
import os
import platform


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, instruction-set flags); ("unknown CPU", empty) where /proc/cpuinfo is unreadable."""
    name, flags = platform.processor() or "unknown CPU", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name") and name in ("unknown CPU", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = frozenset(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, flags


def has_avx512_vnni() -> bool:
    """True where the CPU reports AVX-512 VNNI: u8 x s8 dot products accumulate straight into int32
    (``vpdpbusd``), so int8 products need no reduced activation range to avoid int16 saturation."""
    return "avx512_vnni" in cpu_info()[1]


def cpu_description() -> str:
    """The CPU model name, the flags that decide the bf16 / int8 paths, and the core count."""
    name, flags = cpu_info()
    reported = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if flag in flags]
    return f"{name} ({', '.join(reported) or 'no AVX2'}), {os.cpu_count()} cores"
