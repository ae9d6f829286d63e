"""Reads that cost what they touch: bytes and row groups a class-restricted query reads.

Synthetic stores at ResNet-50 shape (2048 attributions, 512 input sums per image),
written the way an ingest under torchrun writes them: two ranks, each taking every
other image, parts of 4096 rows. Then `polysem compact`.

1. 10 classes: DuckDB's profiler (`PRAGMA enable_profiling = 'json'`; io.total_bytes_read,
   query.total_row_groups_scanned) for a scan of the attributions of 2 of the 10 classes
   against the whole split, before and after compaction. Goal: at most 1.5x their share.
2. 1000 classes, growing split: wall time of the disentangle/evaluate-shaped queries
   restricted to k concept classes (`concept_arv`, the concept classes' mean input sums,
   a `run_activations`-shaped scan of their images), after compaction, for several k and
   split sizes. They should grow with k, not with the split.

Usage: python bench/class_reads.py [--per-class 1300] [--imagenet-per-class 10,30] [--keep DIR] [--tiny]
       python bench/class_reads.py --store DIR [--ks 1,2,8]   (step 2's queries on an existing store)

`--tiny` (10 images per class, 2 per class at 1000 classes, k = 2) only checks that the
script still runs; tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
from _synthetic import finish_store, start_store, write_part
from polysem.query import Store
from polysem.query.compact import compact

CHANNELS, INPUTS = 2048, 512


def build_store(path: Path, classes: int, per_class: int, seed: int = 0, ranks: int = 2, part_rows: int = 4096) -> None:
    rng = np.random.default_rng(seed)
    start_store(path, classes, rng.normal(0, 0.02, size=(CHANNELS, INPUTS)))
    targets = np.repeat(np.arange(classes, dtype=np.int32), per_class)  # ImageFolder order
    for rank in range(ranks):
        mine = np.arange(len(targets))[rank::ranks]  # torchrun: every n-th image
        for start in range(0, len(mine), part_rows):
            ids = mine[start : start + part_rows]
            n = len(ids)
            write_part(path, ids, targets[ids], rng.normal(0, 0.01, size=(n, CHANNELS)),
                       rng.exponential(0.05, size=(n, INPUTS)), rng.normal(5, 1, n), rank=rank)
    finish_store(path, CHANNELS, INPUTS)


def profile(store: Store, sql: str) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    # a plain read-only connection: user SQL's connection is locked and may not write a profile
    with duckdb.connect(str(store.catalog_path), read_only=True) as conn:
        conn.execute("SET file_search_path = ?", [str(store.path)])
        conn.execute("PRAGMA enable_profiling = 'json'")
        conn.execute(f"PRAGMA profiling_output = '{out}'")
        start = time.perf_counter()
        conn.execute(sql).fetchall()
        seconds = time.perf_counter() - start
        conn.execute("PRAGMA disable_profiling")
    report = json.loads(out.read_text())
    out.unlink()
    return {"bytes_read": report["io"]["total_bytes_read"], "row_groups": report["query"]["total_row_groups_scanned"],
            "row_groups_total": report["query"]["total_row_groups_to_scan"], "seconds": round(seconds, 3)}


SCAN = "SELECT sum(list_sum(attribution)) FROM samples WHERE split = 'train'"


def ten_classes(work: Path, per_class: int) -> dict:
    path = work / "ten"
    build_store(path, 10, per_class)
    store, result = Store(path), {}
    for stage in ("parts", "compacted"):
        if stage == "compacted":
            start = time.perf_counter()
            compact(store)
            result["compact_seconds"] = round(time.perf_counter() - start, 2)
        files = [f for f in (path / "samples" / "train").glob("*.parquet")]
        whole = profile(store, SCAN)
        two = profile(store, SCAN + " AND target IN (3, 7)")
        two_list = profile(store, SCAN + " AND list_contains([3, 7], target)")
        result[stage] = {"files": len(files), "whole": whole, "two_of_ten": two, "two_of_ten_list_contains": two_list,
                         "ratio_to_share": round(two["bytes_read"] / (0.2 * whole["bytes_read"]), 2)}
    shutil.rmtree(path)
    return result


def concept_queries(k: int, classes: int) -> dict[str, str]:
    ids = ", ".join(str(c) for c in np.linspace(0, classes - 1, k).astype(int))
    return {
        "concept_arv": f"SELECT * FROM concept_arv(7, [{ids}])",
        "class_means": f"SELECT * FROM class_means WHERE class_id IN ({ids})",
        "activations_scan": (f"SELECT target, avg(list_inner_product(input_sum, input_sum)), "
                             f"avg(channel_attribution(attribution, 7)) FROM samples "
                             f"WHERE split = 'train' AND list_contains([{ids}], target) GROUP BY target"),
    }


def imagenet_shape(work: Path, per_class_sizes: list[int], ks: list[int]) -> list[dict]:
    rows = []
    for per_class in per_class_sizes:
        path = work / f"in1k-{per_class}"
        build_store(path, 1000, per_class)
        compact(Store(path))
        rows += concept_reads(path, ks)
        shutil.rmtree(path)
    return rows


def concept_reads(path: Path, ks: list[int]) -> list[dict]:
    """The concept queries on k classes of a compacted 1000-class store, best of 3 after a warm-up."""
    store, rows = Store(path), []
    split_bytes = sum(f.stat().st_size for f in (path / "samples" / "train").glob("*.parquet"))
    images = store.sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    for k in ks:
        for name, sql in concept_queries(k, 1000).items():
            profile(store, sql)  # warm the page cache: time the query, not the disk
            best = min((profile(store, sql) for _ in range(3)), key=lambda r: r["seconds"])
            rows.append({"images": images, "split_mb": round(split_bytes / 1e6), "k": k, "query": name, **best})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1300)
    parser.add_argument("--imagenet-per-class", default="10,30")
    parser.add_argument("--ks", default="1,2,8")
    parser.add_argument("--keep", type=Path, help="work in this folder (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="a few images per class: a smoke test")
    parser.add_argument("--store", type=Path, help="only the concept queries, on this compacted 1000-class store "
                        "(e.g. one bench/screening_scale.py --keep made at ImageNet's size)")
    args = parser.parse_args()
    if args.store:
        for row in concept_reads(args.store, [int(k) for k in args.ks.split(",")]):
            print(json.dumps(row), flush=True)
        return
    if args.tiny:
        args.per_class, args.imagenet_per_class, args.ks = 10, "2", "2"
    work = args.keep or Path(tempfile.mkdtemp(prefix="polysem-class-reads-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(json.dumps({"ten_classes": ten_classes(work, args.per_class)}, indent=1), flush=True)
        sizes = [int(s) for s in args.imagenet_per_class.split(",")]
        for row in imagenet_shape(work, sizes, [int(k) for k in args.ks.split(",")]):
            print(json.dumps(row), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
