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
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from polysem.errors import PolysemError, QueryError, StoreBusy, StoreError
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
SWEEP_AFTER_S = 60.0
_SYSTEM_DIRS = (Path("/proc"), Path("/sys"))

# The connection user SQL runs on: no extension is installed or loaded (so nothing is
# downloaded and no remote file system exists), no secret is persisted. Local files
# stay readable, which the store's own views need; the statement check refuses every
# statement that could write one. `lock_configuration` is set once the views exist.
SANDBOX = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_persistent_secrets": False,
}


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
        self._reader_conn: duckdb.DuckDBPyConnection | None = None
        self._reader_stamp: tuple | None = None
        self._reader_lock = threading.Lock()

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
        """A DuckDB connection with every view and macro of `sql/` defined.

        A reader gets a cursor on an in-memory copy of the catalog (see `_reader`):
        it never holds the catalog file, so writers never wait for it. A writer opens
        the catalog itself (waiting up to 30 s for another writer), records runs left
        pending by a busy catalog and sweeps files left by a killed command.
        """
        if not write:
            cursor = self._reader().cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            return
        self.create_directory()
        conn = self._open()
        try:
            # Views name their Parquet files relative to the store, so a store can be moved.
            conn.execute("SET file_search_path = ?", [str(self.path)])
            # DuckDB's own progress bar would print into results piped from stdout
            conn.execute("SET enable_progress_bar = false")
            if _stored_digest(conn) != sql_digest():  # the catalog's objects are this polysem's: trust them
                apply_blocks(conn, persistent=True)
                conn.execute(
                    "INSERT OR REPLACE INTO store_meta VALUES ('sql_digest', to_json(?::VARCHAR))", [sql_digest()]
                )
            record_pending(conn, self.path)
            sweep(conn, self.path)
            yield conn
        finally:
            conn.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + WRITE_WAIT_S
        while True:
            try:
                return duckdb.connect(str(self.catalog_path))
            except duckdb.Error as error:
                if not _is_lock_error(error):
                    raise damaged_catalog(self.catalog_path, error) from error
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"cannot write to {self.path}: {_holder(error)} holds its catalog; "
                        "try again when it finishes"
                    ) from error
                time.sleep(0.2)

    def _reader(self) -> duckdb.DuckDBPyConnection:
        """The connection user SQL runs on, rebuilt only when the catalog changed.

        It opens a private copy of the catalog read-only, so the catalog file itself is
        held only while it is copied (milliseconds) and writers never wait for a query.
        The copy's views and macros are used as they are when they were written by this
        polysem's SQL (same digest), else TEMP ones from `sql/` shadow them. No extension
        is installed or loaded and the configuration is locked.
        """
        self.require()
        stamp = _stamp(self.catalog_path)
        with self._reader_lock:
            if self._reader_conn is None or self._reader_stamp != stamp:
                if self._reader_conn is not None:
                    self._reader_conn.close()
                self._reader_conn = None
                self._reader_conn = self._open_snapshot()
                self._reader_stamp = stamp
            return self._reader_conn

    def _open_snapshot(self) -> duckdb.DuckDBPyConnection:
        fd, name = tempfile.mkstemp(prefix="polysem-catalog-", suffix=".duckdb")
        os.close(fd)
        copy = Path(name)
        try:
            self._copy_catalog(copy)
            try:
                conn = duckdb.connect(str(copy), read_only=True, config={**SANDBOX, "file_search_path": str(self.path)})
            except duckdb.Error as error:
                raise damaged_catalog(self.catalog_path, error) from error
        finally:
            # DuckDB keeps its handle of a read-only file; the name is not needed any more.
            copy.unlink(missing_ok=True)
            copy.with_name(copy.name + ".wal").unlink(missing_ok=True)
        try:
            if _stored_digest(conn) != sql_digest():
                apply_blocks(conn, persistent=False)
            conn.execute("SET lock_configuration = true")
        except duckdb.Error as error:
            conn.close()
            raise damaged_catalog(self.catalog_path, error) from error
        return conn

    def _copy_catalog(self, copy: Path) -> None:
        """Copy the catalog (and its write-ahead log) while DuckDB's shared lock keeps writers out."""
        deadline = time.monotonic() + READ_WAIT_S
        while True:
            try:
                with _scratch() as conn:
                    conn.execute("ATTACH ? AS polysem_catalog (READ_ONLY)", [str(self.catalog_path)])
                    try:
                        shutil.copyfile(self.catalog_path, copy)
                        wal = self.catalog_path.with_name(self.catalog_path.name + ".wal")
                        if wal.is_file():
                            shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
                    finally:
                        conn.execute("DETACH polysem_catalog")
                return
            except duckdb.Error as error:
                if not _is_lock_error(error):
                    raise damaged_catalog(self.catalog_path, error) from error
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"cannot read {self.path}: {_holder(error)} has held its catalog for writing "
                        f"for over {READ_WAIT_S:.0f} s; try again when it finishes"
                    ) from error
                time.sleep(0.1)

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

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run one read-only statement and return its result as an Arrow table.

        `params` are bound to `?` (a list) or `$name` (a dict). The statement runs
        in a transaction that is always rolled back, on the sandboxed in-memory
        connection of `connect()`; see `check_read_only` for what is allowed.
        """
        check_read_only(query)
        for attempt in range(2):
            with self.connect() as cursor:
                cursor.begin()
                try:
                    return cursor.sql(query, params=params).to_arrow_table()
                except duckdb.IOException as error:
                    # a compaction swapped the split's files after this query listed them (query.compact)
                    if attempt == 0 and "no such file" in str(error).lower():
                        continue
                    raise query_error(error, self.path) from error
                except duckdb.Error as error:
                    raise query_error(error, self.path) from error
                finally:
                    cursor.rollback()

    query = sql  # the name older code and notebooks use

    def table(self, name_or_query: str, params: list | dict | None = None) -> pa.Table:
        """A table, view, macro call (`relevant_pairs(p := 0.8)`) or SELECT, as Arrow."""
        return self.query(as_select(name_or_query), params)

    def export(self, name_or_query: str, out: str | os.PathLike, params: list | dict | None = None) -> int:
        """Write a table, view, macro call or query to Parquet, CSV or JSON (by suffix).

        Returns the number of rows written. The file appears only when complete.
        """
        out = Path(out)
        self.check_outside(out)
        fmt = export_format(out)
        result = self.table(name_or_query, params)
        write_result(result, out, fmt)
        return result.num_rows

    def info(self) -> dict[str, Any]:
        """What the store holds: its metadata, images per split, classes, runs and size on disk."""
        info = self.meta()
        info["splits"] = {
            row["split"]: {"images": row["n_images"], "unreadable": row["n_errors"], "classes": row["n_classes"]}
            for row in self.sql("SELECT * FROM split_counts").to_pylist()
        }
        info["classes"] = self.sql("SELECT count(*) AS n FROM classes").column("n")[0].as_py()
        info["runs"] = self.sql("SELECT count(*) AS n FROM runs").column("n")[0].as_py()
        info["store"] = str(self.path)
        info["size_bytes"] = self.size_bytes()
        n_images = sum(split["images"] for split in info["splits"].values())
        sample_bytes = sum(p.stat().st_size for p in self.path.glob("samples/*/*.parquet")
                           if p.parent.name != layout.SCHEMA_DIR)
        info["bytes_per_image"] = round(sample_bytes / n_images) if n_images else None
        return info

    def check_outside(self, out: str | os.PathLike, folder: bool = False) -> None:
        """Refuse an output path before anything is written: a folder where a file is
        expected (or the reverse), a path in /proc or /sys, or anything inside the store,
        where it could replace a file the store reads."""
        path = Path(out).expanduser().absolute()
        resolved = path.resolve()
        if any(resolved.is_relative_to(system) for system in _SYSTEM_DIRS):
            raise QueryError(f"{out} is a system path ({resolved}), not a place for results; "
                             "choose a path in one of your folders")
        if resolved.is_relative_to(self.path.resolve()):
            raise QueryError(f"{out} is inside the store {self.path}; write results somewhere else")
        if not folder and path.is_dir():
            raise QueryError(f"{out} is a folder; give a file name, e.g. {path / 'result.parquet'}")
        if folder and path.exists() and not path.is_dir():
            raise QueryError(f"{out} is a file; give a folder (for the plots or the report)")

    def check(self, repair: bool = False) -> "CheckReport":
        """Verify every Parquet file's footer and row counts against the catalog; see `query.check`."""
        from polysem.query.check import check_store

        return check_store(self, repair)

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


def _stored_digest(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The digest of the SQL that defined the catalog's views and macros (None in a new catalog)."""
    try:
        rows = conn.execute("SELECT value ->> '$' FROM store_meta WHERE key = 'sql_digest'").fetchall()
    except duckdb.CatalogException:
        return None
    return rows[0][0] if rows else None


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


# -- the read-only check ------------------------------------------------------

# Query nodes a read can contain; DuckDB also parses DELETE/INSERT/UPDATE nodes inside a
# WITH of a SELECT statement and runs them.
_QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
# Table functions that run SQL given as a string, which the parser cannot see into.
_SQL_FUNCTIONS = {"query", "query_table"}
_scratch_lock = threading.Lock()
_scratch_conn: duckdb.DuckDBPyConnection | None = None


@contextmanager
def _scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    """One in-memory connection per process for parsing and copying; creating one costs ~20 ms."""
    global _scratch_conn
    with _scratch_lock:
        if _scratch_conn is None:
            _scratch_conn = duckdb.connect(":memory:", config=SANDBOX)
        yield _scratch_conn


def check_read_only(sql: str) -> None:
    """Refuse anything but one query, classified by DuckDB's own parser.

    Allowed: SELECT, WITH ... SELECT, VALUES, FROM, TABLE, DESCRIBE, SUMMARIZE, SHOW,
    PIVOT/UNPIVOT, and EXPLAIN [ANALYZE] of one of these. Refused: every other
    statement type, a WITH holding DELETE/INSERT/UPDATE, and the `query()` and
    `query_table()` table functions.
    """
    statement = _one_statement(sql)
    kind = statement.type.name
    if kind == "EXPLAIN":
        check_read_only(_explained(statement.query))
    elif kind == "MULTI" and _keywords(statement.query)[:1] in (["pivot"], ["unpivot"]):
        # DuckDB plans a PIVOT as several statements, which it cannot serialise; its
        # source is a subquery, where the binder refuses DML, so only SQL strings remain.
        if _SQL_FUNCTIONS & {word for word in _words(statement.query)}:
            raise QueryError("query() and query_table() are not available here; write the query itself")
    elif kind == "SELECT":
        _check_tree(_serialised(statement.query))
    else:
        raise QueryError(
            f"{kind} statements are not allowed: queries on a store are read-only; "
            "use `polysem export` to write results to a file"
        )


def _one_statement(sql: str):
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(_first_line(error)) from error
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}; run them one at a time")
    return statements[0]


def _tokens(sql: str) -> list[tuple[int, str, str]]:
    """(position, kind, lower-case text) of every token but comments, by DuckDB's tokenizer."""
    found = duckdb.tokenize(sql)
    ends = [position for position, _ in found[1:]] + [len(sql)]
    return [(position, kind.name, sql[position:end].strip().lower())
            for (position, kind), end in zip(found, ends) if kind.name != "comment"]


def _keywords(sql: str) -> list[str]:
    return [text for _, kind, text in _tokens(sql) if kind == "keyword"]


def _words(sql: str) -> list[str]:
    return [text.strip('"') for _, kind, text in _tokens(sql) if kind in ("keyword", "identifier")]


def _explained(sql: str) -> str:
    """The statement an EXPLAIN [ANALYZE] explains, to be checked like any other."""
    tokens = _tokens(sql)
    rest = 1
    if len(tokens) > 1 and tokens[1][2] in ("analyze", "analyse"):
        rest = 2
    if len(tokens) <= rest or tokens[rest][2] == "(":
        raise QueryError("EXPLAIN takes no options here; write EXPLAIN [ANALYZE] SELECT ...")
    return sql[tokens[rest][0]:]


def _serialised(sql: str) -> dict:
    with _scratch() as conn:
        text = conn.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
    tree = json.loads(text)
    if tree.get("error"):
        raise QueryError(tree.get("error_message", "cannot parse the query"))
    return tree


def _check_tree(node) -> None:
    if isinstance(node, list):
        for item in node:
            _check_tree(item)
    elif isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _QUERY_NODES:
            verb = kind.split("_")[0]
            raise QueryError(f"{verb} inside a query is not allowed: queries on a store are read-only")
        if node.get("type") == "TABLE_FUNCTION":
            function = node.get("function", {}).get("function_name", "")
            if function.lower() in _SQL_FUNCTIONS:
                raise QueryError(f"{function}() is not available here; write the query itself")
        for value in node.values():
            _check_tree(value)


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
    """Write an Arrow table as parquet/csv/json, atomically (the store's one atomic write)."""
    if fmt == "parquet":
        layout.write_atomic(result, out)
        return
    with layout.atomic_path(out) as tmp:
        if fmt == "csv":
            duckdb.from_arrow(result).write_csv(str(tmp))
        else:
            with open(tmp, "w") as handle:
                json.dump(result.to_pylist(), handle, default=str)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


# -- errors that name the file and the fix -----------------------------------

_FILE_IN_ERROR = re.compile(r"""(?:file|pattern)\s+['"]([^'"]+\.parquet)['"]""", re.I)


def query_error(error: duckdb.Error, store: Path) -> PolysemError:
    """The one translation of a failed query: a damaged or missing store file becomes a
    StoreError naming the file and the fix; anything else is the query's own error."""
    match = _FILE_IN_ERROR.search(str(error))
    if match:
        path = Path(match.group(1))
        path = path if path.is_absolute() else store / path
        try:
            relative = path.absolute().relative_to(store)
        except ValueError:
            relative = None
        if relative is not None:
            return damaged_file(store, relative, _first_line(error))
    return QueryError(_first_line(error))


def damaged_file(store: Path, relative: Path, why: str) -> StoreError:
    """`relative` (a path inside `store`) cannot be read: say which file and how to fix it."""
    parts = relative.parts
    if len(parts) == 3 and parts[0] in layout.PART_TABLES and parts[1] != layout.SCHEMA_DIR:
        fix = (f"run `polysem check --repair --store {store}` to set it aside, then "
               f"`polysem ingest DATA_DIR --split {parts[1]}` to store its images again")
    elif parts and parts[-1] == "empty.parquet" or "*" in str(relative):
        fix = f"run `polysem check --repair --store {store}` to rewrite the store's schema files"
    else:
        fix = "it is written when the store is created: restore it from a backup, or ingest into a new --store"
    return StoreError(f"{store / relative} is damaged or missing ({why}); {fix}")


def damaged_catalog(catalog: Path, error: Exception) -> StoreError:
    return StoreError(f"cannot open the catalog {catalog}: {_first_line(error)}; restore it from a backup, "
                      "or ingest into a new --store")


def _holder(error: Exception) -> str:
    """Who holds the catalog, from DuckDB's lock message: 'process 123 (polysem wordnet)'."""
    match = re.search(r"PID (\d+)", str(error))
    if not match:
        return "another process"
    pid = match.group(1)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [Path(a.decode(errors="replace")).name if i == 0 else a.decode(errors="replace")
                 for i, a in enumerate(argv) if a][:4]
        command = " ".join(" ".join(words).split())  # one line, whatever the command line held
        return f"process {pid} ({command[:60] + '...' if len(command) > 60 else command})"
    except OSError:
        return f"process {pid}"


def _stamp(catalog: Path) -> tuple:
    """Changes whenever a writer commits: the catalog's and its write-ahead log's stat."""
    stamp = []
    for path in (catalog, catalog.with_name(catalog.name + ".wal")):
        try:
            st = path.stat()
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


# -- work kept across a busy catalog, and files left by a kill -------------------

PENDING_SUFFIX = ".pending.json"
_PENDING_TABLES = ("runs", "rho_scores")


def write_pending(store: Path, artifact: Path, rows: dict[str, list[dict]]) -> Path:
    """Keep the catalog rows of a finished artifact next to it until they are recorded."""
    unknown = set(rows) - set(_PENDING_TABLES)
    if unknown:
        raise ValueError(f"cannot keep rows of {sorted(unknown)} pending")
    path = store / artifact.with_name(artifact.name + PENDING_SUFFIX)
    layout.write_text_atomic(json.dumps(rows, default=str), path)
    return path


def record_pending(conn: duckdb.DuckDBPyConnection, store: Path) -> list[str]:
    """Insert the rows of every pending artifact not yet recorded; returns the run ids recorded.

    A pending file whose runs are already in the catalog (a kill after the commit) is
    just removed, so rows are never recorded twice.
    """
    recorded = []
    for path in sorted((store / "artifacts").glob(f"*{PENDING_SUFFIX}")):
        artifact = path.with_name(path.name[: -len(PENDING_SUFFIX)])
        if not artifact.is_file():
            continue  # swept when old; the artifact may be on its way
        rows = json.loads(path.read_text())
        ids = [run["run_id"] for run in rows.get("runs", [])]
        known = conn.execute("SELECT count(*) FROM runs WHERE list_contains(?, run_id)", [ids]).fetchone()[0]
        if not known:
            conn.execute("BEGIN")
            for table in _PENDING_TABLES:
                for row in rows.get(table, []):
                    columns = list(row)
                    conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                                 [row[c] for c in columns])
            conn.execute("COMMIT")
            recorded += ids
        path.unlink()
    return recorded


def sweep(conn: duckdb.DuckDBPyConnection, store: Path, older_than_s: float = SWEEP_AFTER_S) -> list[Path]:
    """Remove what a killed command left: temporary files, artifacts without a run row, and
    pending records without their artifact. Only files older than `older_than_s`, so a
    command writing right now (an ingest's next part) keeps its own. Returns what went."""
    cutoff = time.time() - older_than_s
    referenced = {Path(row[0]).name for row in conn.execute("SELECT DISTINCT artifact FROM runs").fetchall()}
    candidates = [p for p in store.rglob(".*.tmp*") if p.name.endswith((".tmp", ".tmp.npz"))]
    artifacts = store / "artifacts"
    if artifacts.is_dir():
        candidates += [p for p in artifacts.glob("*.pt") if p.name not in referenced
                       and not p.with_name(p.name + PENDING_SUFFIX).exists()]
        candidates += [p for p in artifacts.glob(f"*{PENDING_SUFFIX}")
                       if not p.with_name(p.name[: -len(PENDING_SUFFIX)]).exists()]
    removed = []
    for path in candidates:
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass  # its writer renamed or removed it meanwhile
    return removed
