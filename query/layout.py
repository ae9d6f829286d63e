"""Where things live inside a store directory, and the Parquet schemas of its tables.

This module is the one place that decides the store's on-disk layout:

    STORE/catalog.duckdb                    DuckDB catalog: views, macros, small tables
    STORE/samples/<split>/part-*.parquet    one row per image, as ingest wrote them
    STORE/samples/<split>/compact-*.parquet the same rows after `polysem compact`: class-ordered,
                                            one class per row group (query.compact)
    STORE/samples/.<split>.lock             held by the ingest or compaction of the split
    STORE/.compact/                         compaction's staging folders (never globbed)
    STORE/ingest_errors/<split>/part-*.parquet
    STORE/classes.parquet, STORE/layer_weights.parquet
    STORE/artifacts/                        disentangled layers, plots
    STORE/cache/                            l-1 feature maps for the rho search

Each Parquet table also holds `_schema/empty.parquet`, a zero-row file with the
table's schema, so its view is valid (and typed) before the first part exists.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

CATALOG = "catalog.duckdb"
SCHEMA_DIR = "_schema"

SAMPLES = pa.schema(
    [
        ("image_id", pa.int64()),
        ("split", pa.string()),
        ("path", pa.string()),
        ("target", pa.int32()),
        ("prediction", pa.int32()),  # class id of the argmax logit; NULL when that logit is no class's
        ("predicted_logit", pa.int32()),
        ("target_logit", pa.float32()),
        ("attribution", pa.list_(pa.float32())),
        ("input_sum", pa.list_(pa.float32())),
        ("positions", pa.int32()),
    ]
)

INGEST_ERRORS = pa.schema(
    [
        ("image_id", pa.int64()),
        ("split", pa.string()),
        ("path", pa.string()),
        ("target", pa.int32()),
        ("error", pa.string()),
        ("failed_at", pa.timestamp("us")),
    ]
)

CLASSES = pa.schema(
    [("class_id", pa.int32()), ("folder", pa.string()), ("name", pa.string()), ("wnid", pa.string()),
     ("logit", pa.int32())]
)

LAYER_WEIGHTS = pa.schema(
    [("channel", pa.int32()), ("weight", pa.list_(pa.float32())), ("bias", pa.float32())]
)

PART_TABLES = {"samples": SAMPLES, "ingest_errors": INGEST_ERRORS}


def part_dir(store: Path, table: str, split: str) -> Path:
    return store / table / split


def part_glob(store: Path, table: str, split: str | None = None) -> str:
    return str(store / table / (split or "*") / "*.parquet")


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """The one atomic write: yields a hidden temporary name in the same folder (which no
    `*.parquet` glob matches and the store's sweep recognises); once the block has written
    it, it is flushed to disk and renamed to `path`. On failure it is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file so that it appears complete or not at all."""
    write_row_groups_atomic([table], table.schema, path)


def write_row_groups_atomic(tables, schema: pa.Schema, path: Path, row_group_rows: int = 1 << 20) -> None:
    """Like `write_atomic`, with each table of `tables` in row groups of its own (at most
    `row_group_rows` rows each): a row group never mixes two tables' rows, which is what lets
    compaction give each class row groups whose min/max statistics name that class alone."""
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd", **_encodings(schema)) as writer:
            for table in tables:
                writer.write_table(table, row_group_size=row_group_rows)


def write_text_atomic(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _encodings(schema: pa.Schema) -> dict:
    """Dictionaries for strings only; float columns byte-stream-split.

    Dictionary encoding of float32 attributions costs more than it saves, and
    byte stream splitting lets zstd compress floats: about 8.6 KB per ResNet-50
    image instead of 14 KB with pyarrow's defaults (docs/benchmarks.md).
    """
    strings, floats = [], []
    for field in schema:
        if pa.types.is_string(field.type):
            strings.append(field.name)
        elif pa.types.is_floating(field.type):
            floats.append(field.name)
        elif pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type):
            floats.append(f"{field.name}.list.element")
    return {"use_dictionary": strings, "use_byte_stream_split": floats}


def new_part_path(store: Path, table: str, split: str, rank: int) -> Path:
    """A fresh part name; the rank keeps torchrun ranks out of each other's files."""
    return part_dir(store, table, split) / f"part-r{rank:03d}-{uuid.uuid4().hex[:12]}.parquet"


def split_lock_path(store: Path, split: str) -> Path:
    """Outside the split's folder, which compaction swaps for a new one."""
    return store / "samples" / f".{split}.lock"


def split_folders(store: Path, table: str = "samples") -> list[Path]:
    """The split folders of a part table (not `_schema`)."""
    root = store / table
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != SCHEMA_DIR) if root.is_dir() else []


def write_schema_files(store: Path) -> None:
    for table, schema in PART_TABLES.items():
        path = store / table / SCHEMA_DIR / "empty.parquet"
        if not path.exists():
            write_atomic(schema.empty_table(), path)
