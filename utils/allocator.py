"""Host-memory allocator settings for CPU training.

A training step allocates and frees the same large activation tensors every iteration. glibc's
malloc serves blocks above its mmap threshold (at most 32 MB) with fresh ``mmap`` calls and returns
them to the kernel on ``free``, so every step faults in (and zeroes) gigabytes of new pages again, a
visible share of a CPU training step (measured in docs/benchmarks.md).
:func:`retain_freed_memory` makes malloc keep freed memory for reuse instead: no ``mmap`` for
large blocks, no trimming of the heap. Peak memory is unchanged (the same tensors are live at the
peak); the process simply does not hand memory back between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from utils.log import LOGGER

_M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
_M_MMAP_MAX = -4
_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")


def retain_freed_memory() -> bool:
    """On Linux with glibc: keep freed heap memory for reuse (``mallopt``); returns whether it was set.

    Does nothing when the user chose allocator settings already (``MALLOC_*`` tunables in the
    environment, or another allocator through ``LD_PRELOAD``), or on other platforms.
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    LOGGER.debug(f"malloc: keep freed memory for reuse: {ok}")
    return ok
