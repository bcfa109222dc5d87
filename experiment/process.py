"""What every process that trains sets first: its torch threads and how the C allocator keeps memory;
and, before each job, the float32 precision of GPU matmuls and convolutions its config asks for."""

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


def set_tf32(allowed: bool) -> None:
    """TF32 (a 10-bit mantissa) for float32 matmuls and cuDNN convolutions on GPUs that have it, as the
    config's `tf32` says. Both flags are set explicitly because torch's defaults differ (matmul off,
    cuDNN on) and have changed between releases. Global to the process, so set per job: a process
    may do jobs of several configs. No effect on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


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
