"""Keep freed memory in the process (speed.keep_freed_memory; CPU training).

glibc's malloc serves every block over 32 MB (at most; the threshold adapts) with its own mmap
and unmaps it when freed. A training step on a CPU allocates and frees activations of 10-100 MB
per layer, so each step the kernel hands the same pages back zeroed, one page fault per 4 KB:
a ReLU over one tower's conv1 output [128, 48, 55, 55] took 24 ms on fresh pages, 8 ms on reused ones
(this project's 2-core CPU). Raising the mmap threshold and the trim threshold makes malloc
keep such blocks in its heap and reuse them: after a few steps (while the heap grows to its
high-water mark) a step's allocations fault in almost no pages. The process keeps its peak
memory; the numbers computed are the same.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 1 << 30  # blocks up to 1 GB come from the heap, not from their own mmap
TRIM_BYTES = 2**31 - 1  # never give the free top of the heap back (the largest C int)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed blocks instead of returning them to the OS.
    Process-wide and lasting. Returns False where there is no glibc (macOS, musl): no change."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
