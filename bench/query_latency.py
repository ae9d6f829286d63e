"""Latency of a trivial query: `Store.sql('SELECT 1')` in-process, and `polysem sql 'SELECT 1'` as a process.

Builds a small synthetic store (30 images of 3 classes, 8 channels of 3 inputs, written in the
store's format by bench/_synthetic.py; no model), then times:

- the first `Store.sql` of a fresh Store object (copies the catalog, opens the query connection);
- every later call (the connection is reused while the catalog is unchanged): median and p95 of 200;
- `Store.sql` on a 30-image `samples` count (reads the Parquet);
- `polysem sql 'SELECT 1' --format csv` as a fresh process: median of 10 runs, and of bare
  `python -c "import duckdb, pyarrow, typer"` for the floor any such process pays.

Usage: python bench/query_latency.py [--keep DIR] [--tiny]

`--tiny` (fewer repetitions, the "processes" run in this process) only checks that the script still runs;
tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _process import python

ROOT = Path(__file__).resolve().parent.parent


def build_store(where: Path) -> Path:
    import numpy as np
    from _synthetic import finish_store, start_store, write_part

    store = where / "store"
    rng = np.random.default_rng(0)
    channels, inputs, classes, per_class = 8, 3, 3, 10
    start_store(store, classes, rng.normal(0, 1, size=(channels, inputs)))
    n = classes * per_class
    write_part(store, np.arange(n), np.repeat(np.arange(classes), per_class), rng.normal(0, 1, size=(n, channels)),
               rng.exponential(1, size=(n, inputs)), rng.normal(5, 1, n))
    finish_store(store, channels, inputs)
    return store


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def process_ms(args: list[str], n: int, in_process: bool = False) -> list[float]:
    """Milliseconds of `python ARGS` as a fresh process, `n` times (`in_process`: run here, for --tiny)."""
    env = {**os.environ, "POLYSEM_OFFLINE": "1"}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        python(args, in_process, env, cwd=ROOT)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Build the store here and keep it.")
    parser.add_argument("--tiny", action="store_true", help="a few repetitions: a smoke test")
    args = parser.parse_args()
    reps = {"fresh": 2, "warm": 20, "count": 5, "process": 1} if args.tiny else {"fresh": 5, "warm": 200, "count": 50,
                                                                                  "process": 10}
    where = args.keep or Path(tempfile.mkdtemp(prefix="polysem-latency-"))
    try:
        report(build_store(where), reps, in_process=args.tiny)
    finally:
        if args.keep is None:
            shutil.rmtree(where, ignore_errors=True)


def report(store: Path, reps: dict[str, int], in_process: bool = False) -> None:

    from polysem.query import Store

    first = timed(lambda: Store(store).sql("SELECT 1"), reps["fresh"])
    warm_store = Store(store)
    warm_store.sql("SELECT 1")
    warm = sorted(timed(lambda: warm_store.sql("SELECT 1"), reps["warm"]))
    count = sorted(timed(lambda: warm_store.sql("SELECT count(*) FROM samples"), reps["count"]))
    cli = process_ms(["-m", "polysem.cli", "sql", "SELECT 1", "--format", "csv", "--store", str(store)], reps["process"],
                     in_process)
    floor = process_ms(["-c", "import duckdb, pyarrow, typer"], reps["process"], in_process)

    print(f"Store.sql('SELECT 1'), fresh Store (copy + open): median {statistics.median(first):.1f} ms")
    print(f"Store.sql('SELECT 1'), warm: median {statistics.median(warm):.2f} ms, p95 {warm[int(len(warm) * 0.95)]:.2f} ms")
    print(f"Store.sql('SELECT count(*) FROM samples'), warm: median {statistics.median(count):.2f} ms")
    print(f"polysem sql 'SELECT 1' (process): median {statistics.median(cli):.0f} ms, min {min(cli):.0f} ms")
    print(f"python -c 'import duckdb, pyarrow, typer' (floor): median {statistics.median(floor):.0f} ms")


if __name__ == "__main__":
    main()
