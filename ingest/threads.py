"""How many CPU threads an ingest uses: DataLoader workers and torch's intra-op threads.

torch starts one intra-op thread per core and each DataLoader worker is another
busy process; on a small machine the two fight for the cores (a 2-core ingest ran
5x faster with OMP_NUM_THREADS=1, docs/benchmarks.md). So on a CPU the defaults
split the cores: workers decode, the rest run the model. Under torchrun the cores
of the node are shared among its local ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

WORKER_START_ENV = "POLYSEM_WORKER_START"  # how DataLoader workers start: fork, forkserver (default) or spawn

__all__ = ["WORKER_START_ENV", "cores_per_process", "default_num_workers", "default_threads", "torch_threads"]


def cores_per_process() -> int:
    """Cores this process may use, divided among torchrun's ranks on this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    cores = min(cores, _cgroup_cpus() or cores)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def default_num_workers(cores: int | None = None) -> int:
    """0 (decode in the main process) on 2 cores or fewer, else half the cores, at most 8."""
    cores = cores_per_process() if cores is None else cores
    return 0 if cores <= 2 else min(8, cores // 2)


def default_threads(device: torch.device, num_workers: int, cores: int | None = None) -> int | None:
    """torch intra-op threads for an ingest: on a CPU the cores the workers leave (at least 1);
    None (torch's own choice) on a GPU, or when OMP_NUM_THREADS says what the user wants."""
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = cores_per_process() if cores is None else cores
    return max(1, cores - num_workers)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n intra-op threads (None: leave them), then restore the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cgroup_cpus() -> int | None:
    """The CPU quota of a container (cgroup v2 cpu.max), which neither affinity nor torch sees."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, -(-int(quota) // int(period)))
