"""Where things live inside a store directory, and the Parquet schemas of its tables.

This module is the one place that decides the store's on-disk layout:

    STORE/catalog.duckdb                    DuckDB catalog: views, macros, small tables
    STORE/samples/<split>/layer=<name>/part-*.parquet     one row per image of the layer, as ingest wrote them
    STORE/samples/<split>/layer=<name>/compact-*.parquet  the same rows after `polysem compact`: class-ordered,
                                            one class per row group (query.compact)
    STORE/samples/<split>/*.parquet         a split written before stores held several layers: the first
                                            layer's rows, until compaction moves them to its folder
    STORE/samples/.<split>.lock             held by the ingest or compaction of the split
    STORE/.compact/                         compaction's staging folders (never globbed)
    STORE/ingest_errors/<split>/part-*.parquet
    STORE/classes.parquet, STORE/layer_weights.parquet (the first layer's), layer_weights-<name>.parquet
    STORE/artifacts/                        disentangled layers, plots
    STORE/cache/                            l-1 feature maps for the rho search

Each Parquet table also holds `_schema/empty.parquet`, a zero-row file with the
table's schema, so its view is valid (and typed) before the first part exists.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from polysem.util import atomic

__all__ = ["CATALOG", "CLASSES", "INGEST_ERRORS", "LAYER_PREFIX", "LAYER_WEIGHTS", "OPTIONAL_COLUMNS", "PART_TABLES", "SAMPLES", "SCHEMA_DIR", "image_path_in_root", "image_root_problem", "layer_dir", "layer_files", "new_part_path", "only_creation_files", "part_dir", "part_files", "part_glob", "schema_problem", "split_folders", "split_lock_path", "weights_file", "write_creation_files",
           "write_schema_files"]

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
        ("positive_sum", pa.float64()),  # NULL in ingest parts: compaction fills it (the `sample_rows` macro)
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
OPTIONAL_COLUMNS = {"samples": {"positive_sum"}}  # files of format 5 or older lack it; the samples view fills it


LAYER_PREFIX = "layer="


def part_dir(store: Path, table: str, split: str) -> Path:
    return store / table / split


def layer_dir(store: Path, split: str, layer: str) -> Path:
    """The folder of one layer's samples parts of a split (its name is checked by `query.meta.check_layer_name`)."""
    return part_dir(store, "samples", split) / f"{LAYER_PREFIX}{layer}"


def layer_files(store: Path, split: str, layer: str, first_layer: str | None) -> list[Path]:
    """The samples files of one layer of a split: its folder's, and for the store's first layer the files of the
    split written before stores held several layers."""
    files = sorted(layer_dir(store, split, layer).glob("*.parquet"))
    if layer == first_layer:
        files = sorted(part_dir(store, "samples", split).glob("*.parquet")) + files
    return files


def part_glob(store: Path, table: str, split: str | None = None) -> str:
    return str(store / table / (split or "*") / "*.parquet")


def weights_file(store: Path, layer: str, first_layer: str) -> Path:
    """Where a layer's weight is: layer_weights.parquet for the first layer, layer_weights-<name>.parquet else."""
    return store / ("layer_weights.parquet" if layer == first_layer else f"layer_weights-{layer}.parquet")


def new_part_path(store: Path, table: str, split: str, rank: int, layer: str | None = None) -> Path:
    """A fresh part name; the rank keeps torchrun ranks out of each other's files. Samples parts go to their
    layer's folder."""
    folder = layer_dir(store, split, layer) if layer is not None else part_dir(store, table, split)
    return folder / f"part-r{rank:03d}-{uuid.uuid4().hex[:12]}.parquet"


def split_lock_path(store: Path, split: str) -> Path:
    """Outside the split's folder, which compaction swaps for a new one."""
    return store / "samples" / f".{split}.lock"


def split_folders(store: Path, table: str = "samples") -> list[Path]:
    """The split folders of a part table (not `_schema`)."""
    root = store / table
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != SCHEMA_DIR) if root.is_dir() else []


def write_schema_files(store: Path, *, replace: bool = False) -> None:
    """Each part table's zero-row schema file, where it is missing (`replace`: also where it is not this
    polysem's schema, e.g. hand-edited, or cannot be read)."""
    for table, schema in PART_TABLES.items():
        path = store / table / SCHEMA_DIR / "empty.parquet"
        if not path.exists() or (replace and _unfit(table, path)):
            atomic.write_atomic(schema.empty_table(), path)


def _unfit(table: str, path: Path) -> bool:
    """Whether a schema file is not this polysem's: other columns, or not readable as Parquet at all."""
    try:
        return schema_problem(table, path) is not None
    except (OSError, ValueError):  # pyarrow: ArrowInvalid is a ValueError
        return True


def write_creation_files(store: Path) -> None:
    """The Parquet files a first ingest writes before it creates the catalog, each empty: the part tables' schema
    files, classes.parquet and the first layer's weight file (`only_creation_files` of the folder is then true)."""
    write_schema_files(store)
    atomic.write_atomic(CLASSES.empty_table(), store / "classes.parquet")
    atomic.write_atomic(LAYER_WEIGHTS.empty_table(), store / "layer_weights.parquet")


def only_creation_files(store: Path) -> bool:
    """Whether the store's Parquet files are exactly those a first ingest writes before it creates the catalog: each
    part table's schema file, classes.parquet and the layers' weight files, each of polysem's schema (so that
    views defined over them are what they are over any new store's)."""
    import pyarrow.parquet as pq

    wanted = {Path(table, SCHEMA_DIR, "empty.parquet"): schema for table, schema in PART_TABLES.items()}
    wanted[Path("classes.parquet")] = CLASSES
    found = {Path(folder, name).relative_to(store) for folder, _, names in os.walk(store) for name in names
             if name.endswith(".parquet")}
    weights = {path for path in found if path.parent == Path() and path.name.startswith("layer_weights")}
    if found != set(wanted) | weights or Path("layer_weights.parquet") not in weights:
        return False
    try:
        return all(pq.read_schema(store / path).equals(wanted.get(path, LAYER_WEIGHTS), check_metadata=False)
                   for path in found)
    except (OSError, ValueError):  # pyarrow: ArrowInvalid is a ValueError
        return False


def part_files(store: Path) -> Iterator[tuple[str, Path]]:
    """(table, path) of every Parquet file the part tables' views read (their globs in sql/store_views.sql: any depth
    below samples/, one folder below ingest_errors/), schema files included, in a stable order."""
    for table, pattern in (("samples", "samples/**/*.parquet"), ("ingest_errors", "ingest_errors/*/*.parquet")):
        for path in sorted(store.glob(pattern)):
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    continue  # a folder (a split named x.parquet): DuckDB's glob lists files only
            except FileNotFoundError:
                continue  # gone meanwhile (a compaction swapped the split's files)
            yield table, path


def is_schema_file(relative: Path) -> bool:
    """Is `relative` (a path inside a store) one of the schema files polysem writes, <table>/_schema/empty.parquet?"""
    return len(relative.parts) == 3 and relative.parts[0] in PART_TABLES and relative.parts[1:] == (SCHEMA_DIR,
                                                                                                   "empty.parquet")


def part_split(relative: Path) -> str | None:
    """The split of a file the part tables' views read, by its path inside the store (<table>/<split>/[layer=<name>/]
    <part>, or deeper); None for a file polysem never writes a part at (directly in the table's folder, or in its
    schema folder)."""
    parts = relative.parts
    return parts[1] if len(parts) >= 3 and parts[0] in PART_TABLES and parts[1] != SCHEMA_DIR else None


# What pyarrow raises for a footer it cannot read: ArrowInvalid (a ValueError), ArrowNotImplementedError (a
# NotImplementedError, e.g. a forged type), OSError for a file it cannot open.
UNREADABLE = (OSError, ValueError, NotImplementedError, pa.ArrowException)


def schema_problem(table: str, path: Path, *, extra: bool = True) -> str | None:
    """What is wrong with the columns of a Parquet file of a part table (`table`), or None: a column
    polysem writes that is missing (but the optional ones), of another type, or (where `extra`) one it never
    writes. Reads the footer only. A file that cannot be read at all is the caller's to report."""
    import pyarrow.parquet as pq

    expected = PART_TABLES[table]
    found = pq.read_schema(path)
    twice = sorted({name for name in found.names if found.names.count(name) > 1})
    if twice:
        return f"it has the column {twice[0]} twice"
    for field in expected:
        if field.name not in found.names:
            if field.name not in OPTIONAL_COLUMNS.get(table, set()):
                return f"it has no column {field.name}"
        elif not _same_type(found.field(field.name).type, field.type):
            return f"its column {field.name} is {found.field(field.name).type}, not {field.type}"
    more = [name for name in found.names if name not in expected.names] if extra else []
    return f"it has a column polysem never writes, {more[0]}" if more else None


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, a list's element named either way (`item` by Arrow, `element` by Parquet readers)."""
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_type(a.value_type, b.value_type)
    return a == b


def image_root_problem(root: object) -> str | None:
    """Why a split's recorded image folder is none an ingest records, or None: ingest records an absolute folder
    without a trailing slash (pathlib's form), never the file system's root."""
    if not isinstance(root, str) or not root:
        return "the store records no folder for it"
    if not os.path.isabs(root) or root.endswith("/"):
        return f"its recorded folder {root!r} is not one an ingest records (an absolute folder, no trailing slash)"
    return None


def image_path_in_root(path: object, root: str) -> bool:
    """True when a row's path names a file below its split's folder `root` (one `image_root_problem` accepts) by
    its text alone: `root/...` with no empty, `.` or `..` part. The `misshapen_rows` read applies the same rule."""
    if not isinstance(path, str) or not path.startswith(root + "/"):
        return False
    return not any(part in ("", ".", "..") for part in path[len(root) + 1:].split("/"))
