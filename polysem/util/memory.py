"""The C heap's policy for a polysem process: keep freed memory for reuse.

glibc hands every block above its mmap threshold (128 KiB, rising to at most 32 MiB) straight
back to the system when it is freed, and trims the heap's free top. A forward pass on a CPU
allocates and frees each layer's activations (tens of MB at batch 16), so every batch had them
mapped, zeroed by the kernel and unmapped again: ResNet-50's forward pass at batch 16 took
1.0 s instead of 0.7 s on 2 cores (docs/benchmarks.md, captum). With both thresholds raised,
freed blocks stay in the heap and the next batch reuses them. The process keeps its peak
memory until it exits, which suits a command, not a long-lived notebook kernel: the CLI sets it,
the library never does.
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["KEEP_BYTES", "keep_freed_memory"]

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 2**31 - 1  # the largest value mallopt's int takes: blocks up to 2 GiB come from the heap


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when glibc took both.
    Elsewhere (macOS, musl) nothing changes and it returns False."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped = mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)
    trimmed = mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    return bool(mapped and trimmed)
