"""Compaction: a split's ingest parts rewritten as class-ordered files that DuckDB prunes by class.

Ingest writes parts of `rows_per_part` images each; a part's one row group mixes
classes (and under torchrun every rank's parts span all of them), so a query on
two classes reads most of the split. Compaction rewrites the parts sorted by
(target, image_id), each class in row groups of its own: the min/max statistics
of `target` then let DuckDB skip every row group of the other classes, whether
the query says `target IN (...)`, `list_contains(ids, target)` or joins on
target (docs/benchmarks.md, `bench/class_reads.py`).

The swap is atomic. New files are written into a staging folder outside
`samples/` (DuckDB's `samples/*/*.parquet` glob matches hidden folders too), the
files that stay are hard-linked next to them, then one `renameat2(RENAME_EXCHANGE)`
swaps the staging folder with the split's folder: a query that lists the files
sees the old set or the new set, never both, never neither. A query that
listed the old files and opens them after the swap fails to find them;
`Store.query` runs such a query once more. A kill at any moment leaves either
the old folder or the complete new one in place; the next compaction (or
ingest) deletes the staging leftovers and carries on.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from polysem.errors import StoreError
from polysem.query import layout
from polysem.query.confine import check_entry
from polysem.query.split_lock import STAGING, lock_split, staging_folder
from polysem.query.sqlfiles import Statements, define
from polysem.util import atomic
from polysem.util.checks import check_text

__all__ = ["COMPACT_PREFIX", "FILE_ROWS", "ROW_GROUP_ROWS", "STAGING", "CompactSummary", "compact", "compact_split", "lock_split"]

COMPACT_PREFIX = "compact-"
FILE_ROWS = 16_384  # rows per compacted file: about 160 MB of ResNet-50 rows, what one rewrite holds in memory
ROW_GROUP_ROWS = 4_096  # a class with more images gets several row groups, each still of that class only


@dataclass
class CompactSummary:
    split: str
    files_before: int
    files_after: int
    rows_rewritten: int


def compact(store, split: str | None = None) -> list[CompactSummary]:
    """Compact the parts of one split (or of every split) of a store. Returns what each split became.

    Waits for nothing: an ingest of the split that is running holds its lock, and compaction
    refuses (the ingest compacts when it finishes).
    """
    from polysem.query.store import as_store

    store = as_store(store)
    check_text("split", split, none=True)
    store.meta(require_complete=False, any_layer=True)  # refuses a missing store, or one of a newer format (its files)
    staged = store.path / STAGING / "samples"
    # a split whose folder a killed compaction left in staging only is still a split (`recover_staging`)
    splits = sorted({f.name for f in layout.split_folders(store.path)}
                    | ({p.name.removesuffix(".old") for p in staged.iterdir()} if staged.is_dir() else set()))
    if split is not None:
        if split not in splits:
            raise StoreError(f"the store has no split '{split}' (splits: {', '.join(splits) or 'none'}); check `split`")
        splits = [split]
    if any(store.path.glob("samples/*/part-*.parquet")) or any(store.path.glob("samples/*/compact-*.parquet")):
        with store.connect(write=True):
            pass  # files of a store made before layers move into the first layer's folder: the catalog first
    summaries = []
    for name in splits:
        handle = lock_split(store.path, name)
        try:
            summaries.append(compact_split(store.path, name))
        finally:
            handle.close()
    return summaries


def compact_split(store_path: Path, split: str, first_layer: str | None = None) -> CompactSummary:
    """Rewrite the split's ingest parts (and compacted files under half size) class-ordered, in each layer's
    folder. Files of the split written before stores held several layers (in the split's folder itself) hold
    `first_layer` (default: the store's): they move to its folder, linked when compacted and large enough.

    The caller holds the split's lock. Files already compacted and large enough stay as they are.
    """
    folder = check_entry(store_path, layout.part_dir(store_path, "samples", split))
    staging = check_entry(store_path, staging_folder(store_path, split))
    flat = sorted(folder.glob("*.parquet"))
    groups: dict[str, list[Path]] = {}  # layer folder name -> its files
    if flat:
        first_layer = first_layer or _first_layer(store_path)
        groups[f"{layout.LAYER_PREFIX}{first_layer}"] = flat
    for sub in sorted(folder.glob(f"{layout.LAYER_PREFIX}*")):
        groups.setdefault(sub.name, []).extend(sorted(check_entry(store_path, sub).glob("*.parquet")))
    files = [f for group in groups.values() for f in group]
    rows = {f: pq.ParquetFile(f).metadata.num_rows for f in files}
    rewrite = [f for f in files if not f.name.startswith(COMPACT_PREFIX) or rows[f] < FILE_ROWS // 2]
    if not flat and all(f.name.startswith(COMPACT_PREFIX) for f in rewrite):
        return CompactSummary(split, len(files), len(files), 0)  # no new parts since the last compaction
    written = 0
    with atomic.writing(folder, folder=store_path, into_folder=True):  # named for the split, not the staging
        staging.mkdir(parents=True)
        for name, group in groups.items():
            (staging / name).mkdir()
            for f in group:
                if f not in rewrite:
                    os.link(f, staging / name / f.name)
            todo = [f for f in group if f in rewrite]
            if todo:
                written += _write_class_ordered(todo, staging / name)
            atomic.fsync_dir(staging / name)
        atomic.fsync_dir(staging)
        _exchange(staging, folder)
        atomic.fsync_dir(folder.parent)
        shutil.rmtree(staging)  # the old files
    return CompactSummary(split, len(files), len(files) - len(rewrite) + written, sum(rows[f] for f in rewrite))


def _first_layer(store_path: Path) -> str:
    from polysem.query.store import Store

    return next(iter(Store(store_path).meta(any_layer=True)["layers"]))


def _write_class_ordered(files: list[Path], out: Path) -> int:
    """Write the rows of `files` sorted by (target, image_id) into files of about FILE_ROWS rows
    holding whole classes; returns how many files. One file's rows are read at a time: ingest
    parts are class-ordered runs (per rank), so each range query reads few of them."""
    con = duckdb.connect()
    try:
        define(con, "positive_sum", "sample_rows")  # positive_sum is stored here, computed by the store's macro
        names, statements = [str(f) for f in files], Statements(con)
        sizes = statements.parquet_class_sizes(files=names).to_pylist()
        ranges = _class_ranges([(row["target"], row["n"]) for row in sizes])
        for first, last in ranges:
            table = statements.parquet_class_range(files=names, first=first, last=last).cast(layout.SAMPLES)
            atomic.write_row_groups_atomic(_per_class(table), layout.SAMPLES,
                                           out / f"{COMPACT_PREFIX}{uuid.uuid4().hex[:12]}.parquet", ROW_GROUP_ROWS)
        return len(ranges)
    finally:
        con.close()


def _class_ranges(counts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Consecutive classes packed into (first, last) ranges of at most FILE_ROWS rows (a bigger class alone)."""
    ranges: list[tuple[int, int]] = []
    current: list[int] = []  # the targets of the range being filled
    n = 0
    for target, count in counts:
        if current and n + count > FILE_ROWS:
            ranges.append((current[0], current[-1]))
            current, n = [], 0
        current.append(target)
        n += count
    if current:
        ranges.append((current[0], current[-1]))
    return ranges


def _per_class(table: pa.Table):
    """The slices of a target-sorted table, one per class."""
    targets = table.column("target").to_numpy()
    bounds = [0, *(i for i in range(1, len(targets)) if targets[i] != targets[i - 1]), len(targets)]
    for start, stop in itertools.pairwise(bounds):
        yield table.slice(start, stop - start)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (Linux renameat2). Where the OS or filesystem cannot, fall back
    to two renames: between them, for a moment, a query sees none of the split's rows."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    except AttributeError:  # no renameat2 in this C library
        pass
    moved = a.with_name(a.name + ".old")
    os.rename(b, moved)
    os.rename(a, b)
    os.rename(moved, a)

