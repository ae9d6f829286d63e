"""How a polysem command's process runs on a CPU: the C heap keeps freed memory, and OpenMP's idle
threads stop spinning soon. The CLI sets both at its start (`configure_cli_process`); the library never
does, since both are process-wide and suit a command that exits, not a long-lived notebook kernel.

Freed memory. glibc hands every block above its mmap threshold (128 KiB, rising to at most 32 MiB)
back to the system when it is freed, and trims the heap's free top. A forward pass on a CPU allocates
and frees each layer's activations (tens of MB at batch 16), so every batch had them mapped, zeroed by
the kernel and unmapped again: ResNet-50's forward pass at batch 16 took 1.0 s instead of 0.7 s on
2 cores (docs/benchmarks.md). With both thresholds raised, freed blocks stay in the heap and the next
batch reuses them; the process keeps its peak memory until it exits.

Spinning threads. torch's OpenMP threads (GNU libgomp) spin for 300,000 rounds at every layer's
barrier before they sleep. When other processes share the cores, a spinning thread takes the core
from the sibling it waits for: at a load of 6 on 2 cores ResNet-50's batch of 16 took 4.1 to 5.2 s,
and 3.0 to 3.5 s with GOMP_SPINCOUNT=1000, which costs nothing on an idle machine (0.77 s either
way). libgomp reads it once, when torch loads it, so it is set before torch is imported; a user's
own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is.

torch's C++ warnings. A command names each failure in one `Error:` line. torch's C++ code logs some of the
same failures as warnings with a stack trace before that line: a rank whose peer serving the ranks' store
was killed gets TCPStore's "recvValue failed" (ingest.ranks names it "rank 0 stopped"). The CLI lets C++ log
errors only (TORCH_CPP_LOG_LEVEL=ERROR, which c10 reads when torch loads), unless the user set a level.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["CPP_LOG_LEVEL", "KEEP_BYTES", "SPIN_COUNT", "configure_cli_process", "cpp_errors_only", "keep_freed_memory",
           "short_spin_waits"]

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 2**31 - 1  # the largest value mallopt's int takes: blocks up to 2 GiB come from the heap
SPIN_COUNT = "1000"
CPP_LOG_LEVEL = "ERROR"


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


def short_spin_waits() -> bool:
    """Set GOMP_SPINCOUNT for the OpenMP runtime torch will load (and DataLoader workers inherit), unless
    the user chose a wait policy. True when set; False when the user's stands or torch is loaded already
    (libgomp has read its settings then)."""
    if "torch" in sys.modules or os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT"):
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


def cpp_errors_only() -> bool:
    """Set TORCH_CPP_LOG_LEVEL for the torch this process will load, unless the user set it. True when set;
    False when the user's stands or torch is loaded already (c10 has read it then)."""
    if "torch" in sys.modules or os.environ.get("TORCH_CPP_LOG_LEVEL"):
        return False
    os.environ["TORCH_CPP_LOG_LEVEL"] = CPP_LOG_LEVEL
    return True


def configure_cli_process() -> None:
    keep_freed_memory()
    short_spin_waits()
    cpp_errors_only()
