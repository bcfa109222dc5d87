"""What every process that trains sets first: its torch threads and how the C allocator keeps memory."""

from __future__ import annotations

import ctypes
import sys

import torch

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_BYTES = 256 * 2**20


def configure(threads: int) -> None:
    """`threads` torch threads; freed memory kept for reuse (below)."""
    torch.set_num_threads(threads)
    keep_freed_memory()


def keep_freed_memory() -> None:
    """By default glibc serves blocks above 128 KiB with fresh pages from the OS and gives them back
    on free; an ODE solve allocates such blocks (a batch of activations) thousands of times per
    second and pays page faults for each, ≈ 10–30 % of a toy flow's training time. Raising both
    thresholds makes freed blocks reusable (a process keeps up to `KEPT_BYTES` it no longer uses).
    A no-op where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, KEPT_BYTES // 2)
        libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES)
    except (OSError, AttributeError):
        pass
