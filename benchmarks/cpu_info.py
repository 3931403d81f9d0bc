"""The CPU a benchmark ran on, for the header of every table (figures differ between CPU models)."""
from __future__ import annotations

import os
import platform

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def cpu_name() -> str:
    """Model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The instruction-set flags that matter for inference speed (AVX2, AVX-512, VNNI, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in FLAGS_OF_INTEREST if f in have]
    except OSError:
        pass
    return []


def cpu_header() -> str:
    """One line naming the CPU, its usable cores and instruction sets."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {cpu_name()}, {cores} cores usable, instruction sets: {' '.join(cpu_flags()) or 'none of interest'}"


if __name__ == "__main__":
    print(cpu_header())
