"""Opening a store, its metadata, running queries and exporting results.

A store is a directory (see `query.layout`). Its DuckDB catalog is opened for
writing only for short moments (creating the store, recording a run); ingest
writes Parquet parts without holding it, so queries can run during an ingest
and see every complete part.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from polysem.errors import QueryError, StoreBusy, StoreError
from polysem.query import layout
from polysem.query.sqlfiles import apply_blocks, sql_digest

STORE_FORMAT = 2  # 2: classes.logit, samples.predicted_logit, per-split dataset roots
# the metadata a store must hold to count as created (written in one transaction by the first ingest)
REQUIRED_META = ("format", "model", "weights", "weights_sha256", "layer", "layer_shape", "transform",
                 "polysem_version", "created_at")
STORE_ENV = "POLYSEM_STORE"
DEFAULT_STORE = "polysem-store"
WRITE_WAIT_S = 30.0
READ_WAIT_S = 5.0

_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_CALL = re.compile(r"^[A-Za-z_]\w*\s*\(.*\)$", re.S)
_READ_STATEMENTS = {"SELECT", "EXPLAIN"}


def default_store_path() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def _is_lock_error(error: Exception) -> bool:
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class Store:
    """A polysem store directory. Cheap to create; nothing is opened until used."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self.path = self.path.expanduser().absolute()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def catalog_path(self) -> Path:
        return self.path / layout.CATALOG

    def exists(self) -> bool:
        return self.catalog_path.is_file()

    def require(self) -> None:
        if not self.exists():
            raise StoreError(
                f"no polysem store at {self.path}; run `polysem ingest` first, or pass --store / set {STORE_ENV}"
            )

    # -- connections ---------------------------------------------------------

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection to the catalog with every view and macro of `sql/` defined.

        Readers get a read-only connection; any number may run at once. A writer
        waits (up to 30 s) for readers and other writers to finish.
        """
        if write:
            self.create_directory()
        else:
            self.require()
        conn = self._open(write)
        try:
            # Views name their Parquet files relative to the store, so a store can be moved.
            conn.execute("SET file_search_path = ?", [str(self.path)])
            # DuckDB's own progress bar would print into results piped from stdout
            conn.execute("SET enable_progress_bar = false")
            apply_blocks(conn, persistent=write)
            if write:
                conn.execute(
                    "INSERT OR REPLACE INTO store_meta VALUES ('sql_digest', to_json(?::VARCHAR))", [sql_digest()]
                )
            yield conn
        finally:
            conn.close()

    def _open(self, write: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + (WRITE_WAIT_S if write else READ_WAIT_S)
        while True:
            try:
                return duckdb.connect(str(self.catalog_path), read_only=not write)
            except duckdb.IOException as error:
                if not _is_lock_error(error):
                    raise StoreError(f"cannot open {self.catalog_path}: {error}") from error
                if time.monotonic() > deadline:
                    verb = "write to" if write else "read"
                    raise StoreBusy(
                        f"cannot {verb} {self.path}: another process holds its catalog for writing; "
                        "try again when it finishes"
                    ) from error
                time.sleep(0.2)

    def check_writable(self) -> None:
        """Raise unless the store exists writable or could be created; creates nothing."""
        target = self.path
        while not target.exists():
            target = target.parent
        if not target.is_dir() or not os.access(target, os.W_OK):
            raise StoreError(f"store directory {self.path} is not writable; fix its permissions or choose another --store")

    def create_directory(self) -> None:
        self.check_writable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create store directory {self.path}: {error.strerror}; choose another --store") from error
        if not os.access(self.path, os.W_OK):
            raise StoreError(f"store directory {self.path} is not writable; fix its permissions or choose another --store")

    # -- metadata ------------------------------------------------------------

    def meta(self, require_complete: bool = True) -> dict[str, Any]:
        """The store's metadata: model, weights, layer, transform, dataset roots, versions.

        A store whose first ingest stopped before its metadata was committed is refused
        (unless require_complete is false, as ingest does to complete it).
        """
        with self.connect() as conn:
            meta = read_meta(conn)
        if require_complete:
            if not meta_complete(meta):
                raise StoreError(f"the store {self.path} was never completely created (its first ingest stopped); "
                                 "run `polysem ingest` again to complete it")
            if meta["format"] != STORE_FORMAT:
                raise StoreError(f"the store {self.path} was written by polysem {meta.get('polysem_version')} in an "
                                 "older format; ingest again into a new --store")
        return meta

    # -- queries -------------------------------------------------------------

    def query(self, sql: str, params: list | dict | None = None) -> pa.Table:
        """Run one read-only statement and return its result as an Arrow table."""
        check_read_only(sql)
        for attempt in range(2):
            with self.connect() as conn:
                try:
                    return conn.sql(sql, params=params).to_arrow_table()
                except duckdb.IOException as error:
                    # a compaction swapped the split's files after this query listed them (query.compact)
                    if attempt == 0 and "no such file" in str(error).lower():
                        continue
                    raise QueryError(_first_line(error)) from error
                except duckdb.Error as error:
                    raise QueryError(_first_line(error)) from error

    def table(self, name_or_query: str, params: list | dict | None = None) -> pa.Table:
        """A table, view, macro call (`relevant_pairs(p := 0.8)`) or SELECT, as Arrow."""
        return self.query(as_select(name_or_query), params)

    def export(self, name_or_query: str, out: str | os.PathLike, params: list | dict | None = None) -> int:
        """Write a table, view, macro call or query to Parquet, CSV or JSON (by suffix).

        Returns the number of rows written. The file appears only when complete.
        """
        out = Path(out)
        fmt = export_format(out)
        self.check_outside(out)
        result = self.table(name_or_query, params)
        write_result(result, out, fmt)
        return result.num_rows

    def info(self) -> dict[str, Any]:
        """What the store holds: its metadata, images per split, classes, runs and size on disk."""
        info = self.meta()
        with self.connect() as conn:
            info["splits"] = {
                split: {"images": n, "unreadable": e, "classes": c}
                for split, n, e, c in conn.execute("SELECT * FROM split_counts").fetchall()
            }
            info["classes"] = conn.execute("SELECT count(*) FROM classes").fetchone()[0]
            info["runs"] = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        info["store"] = str(self.path)
        info["size_bytes"] = self.size_bytes()
        n_images = sum(split["images"] for split in info["splits"].values())
        sample_bytes = sum(p.stat().st_size for p in self.path.glob("samples/*/*.parquet")
                           if p.parent.name != layout.SCHEMA_DIR)
        info["bytes_per_image"] = round(sample_bytes / n_images) if n_images else None
        return info

    def check_outside(self, out: str | os.PathLike) -> None:
        """Refuse an output file inside the store: it could replace a file the store reads."""
        if Path(out).expanduser().absolute().resolve().is_relative_to(self.path.resolve()):
            raise QueryError(f"{out} is inside the store {self.path}; write results somewhere else")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def as_store(store: "Store | str | os.PathLike | None") -> "Store":
    """A Store from a Store, a path, or None (POLYSEM_STORE or ./polysem-store): the one coercion."""
    return store if isinstance(store, Store) else Store(store)


def dataset_root_key(split: str) -> str:
    """Each split's dataset root is its own key, so ingests of two splits never overwrite each other's."""
    return f"dataset_root:{split}"


def meta_complete(meta: dict[str, Any]) -> bool:
    return all(key in meta for key in REQUIRED_META)


def read_meta(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """store_meta as a dict; the per-split roots are gathered into `dataset_roots` {split: folder}."""
    meta, roots = {}, {}
    for key, value in conn.execute("SELECT key, value FROM store_meta").fetchall():
        if key.startswith("dataset_root:"):
            roots[key.partition(":")[2]] = json.loads(value)
        else:
            meta[key] = json.loads(value)
    meta["dataset_roots"] = roots
    return meta


def write_meta(conn: duckdb.DuckDBPyConnection, values: dict[str, Any]) -> None:
    for key, value in values.items():
        conn.execute("INSERT OR REPLACE INTO store_meta VALUES (?, ?::JSON)", [key, json.dumps(value)])


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(_first_line(error)) from error
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}; run them one at a time")
    kind = statements[0].type.name
    if kind == "MULTI" and statements[0].query.lstrip().upper().startswith(("PIVOT", "UNPIVOT")):
        return  # DuckDB plans a PIVOT as several statements; all of them read
    if kind not in _READ_STATEMENTS:
        raise QueryError(
            f"{kind} statements are not allowed: queries on a store are read-only; "
            "use `polysem export` to write results to a file"
        )


def as_select(name_or_query: str) -> str:
    text = name_or_query.strip().rstrip(";")
    if _IDENT.match(text) or _CALL.match(text):
        return f"SELECT * FROM {text}"
    return text


def export_format(out: Path) -> str:
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in {"parquet", "csv", "json"}:
        raise QueryError(f"cannot tell the format of {out}: use a .parquet, .csv or .json file name")
    return suffix


def write_result(result: pa.Table, out: Path, fmt: str) -> None:
    """Write an Arrow table as parquet/csv/json, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    try:
        if fmt == "parquet":
            layout.write_atomic(result, out)
            return
        if fmt == "csv":
            duckdb.from_arrow(result).write_csv(str(tmp))
        else:
            with open(tmp, "w") as handle:
                json.dump(result.to_pylist(), handle, default=str)
        shutil.move(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
