"""Latency of a trivial query: `Store.sql('SELECT 1')` in-process, and `polysem sql 'SELECT 1'` as a process.

Builds a small ColourNet store (the tests' known-answer model, 30 images), then times:

- the first `Store.sql` of a fresh Store object (copies the catalog, opens the query connection);
- every later call (the connection is reused while the catalog is unchanged): median and p95 of 200;
- `Store.sql` on a 30-image `samples` count (reads the Parquet);
- `polysem sql 'SELECT 1' --format csv` as a fresh process: median of 10 runs, and of bare
  `python -c "import duckdb, pyarrow, typer"` for the floor any such process pays.

Usage: python bench/query_latency.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_store(where: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from polysem.ingest import ingest

    from tests.conftest import COLOUR, make_colour_images

    root = make_colour_images(where / "colours", "train", 10)
    store = where / "store"
    ingest(store, root, "train", model=COLOUR[1], layer=COLOUR[3], transform=COLOUR[5], progress=False)
    return store


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def process_ms(argv: list[str], n: int) -> list[float]:
    env = {**os.environ, "POLYSEM_OFFLINE": "1"}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=ROOT)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Build the store here and keep it.")
    args = parser.parse_args()
    where = args.keep or Path(tempfile.mkdtemp(prefix="polysem-latency-"))
    store = build_store(where)

    from polysem.query import Store

    first = timed(lambda: Store(store).sql("SELECT 1"), 5)
    warm_store = Store(store)
    warm_store.sql("SELECT 1")
    warm = sorted(timed(lambda: warm_store.sql("SELECT 1"), 200))
    count = sorted(timed(lambda: warm_store.sql("SELECT count(*) FROM samples"), 50))
    cli = process_ms([sys.executable, "-m", "polysem.cli", "sql", "SELECT 1", "--format", "csv", "--store", str(store)], 10)
    floor = process_ms([sys.executable, "-c", "import duckdb, pyarrow, typer"], 10)

    print(f"Store.sql('SELECT 1'), fresh Store (copy + open): median {statistics.median(first):.1f} ms")
    print(f"Store.sql('SELECT 1'), warm: median {statistics.median(warm):.2f} ms, p95 {warm[int(len(warm) * 0.95)]:.2f} ms")
    print(f"Store.sql('SELECT count(*) FROM samples'), warm: median {statistics.median(count):.2f} ms")
    print(f"polysem sql 'SELECT 1' (process): median {statistics.median(cli):.0f} ms, min {min(cli):.0f} ms")
    print(f"python -c 'import duckdb, pyarrow, typer' (floor): median {statistics.median(floor):.0f} ms")


if __name__ == "__main__":
    main()
