"""A store: a directory of Parquet tables under a DuckDB catalog (see `query.layout`).

Its catalog is opened for writing only for short moments (creating the store, recording
a run); ingest writes Parquet parts without holding it, so queries can run during an
ingest and see every complete part. The concerns live apart: `catalog` (locking and the
reader's private copy), `sandbox` (what user SQL may do), `serialise` (results as files),
`diagnostics` (errors naming the file and fix), `recovery` (pending runs, the sweep),
`meta` (store_meta and the format).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from polysem.constants import DEFAULT_STORE
from polysem.errors import ArgumentRange, LayerChoice, StoreError
from polysem.query import layout
from polysem.query.catalog import copy_catalog, open_for_writing, quiet, stamp
from polysem.query.confine import check_tree
from polysem.query.diagnostics import damaged_catalog, misfit_part, query_error
from polysem.query.integrity import CheckReport, check_store
from polysem.query.meta import (
    IncompleteStore,
    catalog_created,
    fill_template,
    meta_complete,
    prepare_catalog,
    read_meta,
    recorded_decode,
    refuse_foreign_objects,
    set_aside_foreign_objects,
    stored_layers,
)
from polysem.query.output_paths import check_output
from polysem.query.recovery import record_pending, sweep
from polysem.query.sandbox import SANDBOX, as_select, check_read_only, scratch
from polysem.query.serialise import out_format, write_result
from polysem.query.sqlfiles import READS_FILE, NamedStatements, bind, result
from polysem.query.transaction import Transaction
from polysem.util.atomic import atomic_path, disk_full, is_disk_full
from polysem.util.checks import check_bool, check_params, check_path, check_text
from polysem.util.imports import code_status
from polysem.util.interrupt import interruptible

__all__ = ["DEFAULT_STORE", "STORE_ENV", "Reads", "Store", "Transaction", "as_store", "default_store_path"]

STORE_ENV = "POLYSEM_STORE"


def default_store_path() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


# Prepared catalog copies by what preparing reads: the copied catalog's bytes and the Parquet files the views
# read when they are defined (name, size, modification time). Every Store object of a process that reads the same
# store unchanged, or a copy of it, opens a copy of the prepared bytes. The views name their files relative to the
# store (file_search_path, set per connection), so prepared bytes serve any store that holds those bytes and files.
_PREPARED: dict[tuple[str, str], bytes] = {}
_PREPARED_LOCK = threading.Lock()
_PREPARED_MAX_BYTES = 64 << 20
# The open read-only connections of the latest snapshots, by store folder (the connection resolves the views'
# files there) and snapshot key: Store objects reading the same state share one DuckDB database (opening one
# takes about 15 ms), each reading through cursors of its own. A connection dropped from here closes when the
# last Store holding it lets it go.
_OPEN: OrderedDict[tuple[str, tuple[str, str], str], duckdb.DuckDBPyConnection] = OrderedDict()
_OPEN_MAX = 8
# polysem's catalog as a first ingest defines it (every table, view and macro; no row but the SQL digest), made once
# per process in a folder of its own holding only the files a creation writes, empty and of polysem's schema, and
# the columns each of its views binds to there (see `catalog_template`).
_TEMPLATE: list[tuple[bytes, list]] = []
# The views that read the store's Parquet files themselves; every other view and macro reads through them and the
# tables, so where these bind to the same columns, so does everything else (tests/test_store_reliability.py checks
# the list against sql/).
FILE_VIEWS = ("samples", "ingest_errors", "classes", "all_layer_weights")
_TEMPLATE_LOCK = threading.Lock()
# The catalogs (`catalog_digest`) a writer of this process found nothing foreign in (`refuse_foreign_objects`, 15 to
# 30 ms), and the states its writes left them in (polysem writes nothing foreign): a writer opening one of these
# does not list it again. Any other change (another process's write, an edit by hand) changes the digest.
_CLEAN_CATALOGS: set[str] = set()


def catalog_template() -> tuple[bytes, list]:
    """(the bytes of polysem's catalog as a first ingest defines it, the columns of each view there).

    Defining a view or macro binds it over the store's files (about 100 ms for all of them), and binding depends
    on nothing of the files but the columns the views read from them. So a new store, and a reader's copy of any
    catalog state holding polysem's tables alone (`fill_template`) whose views bind to these same columns over
    its own files, start from these bytes instead: the catalog is the one defining gives there."""
    with _TEMPLATE_LOCK:
        if not _TEMPLATE:
            check_duckdb_path(Path(tempfile.gettempdir()), "the temporary folder", "set TMPDIR to another folder")
            with tempfile.TemporaryDirectory(prefix="polysem-template-") as folder:
                layout.write_creation_files(Path(folder))
                catalog = Path(folder, layout.CATALOG)
                with quiet(duckdb.connect(str(catalog), config={**SANDBOX, "file_search_path": folder})) as conn:
                    prepare_catalog(conn, folder)
                    columns = view_columns(conn, FILE_VIEWS)
                    conn.execute("CHECKPOINT")  # the catalog's file alone holds it
                _TEMPLATE.append((catalog.read_bytes(), columns))
        return _TEMPLATE[0]


def check_duckdb_path(path: Path, what: str, fix: str) -> None:
    """Refuse a folder DuckDB would misread: it splits file_search_path (where the views find the store's files) on
    commas, and reads a backslash in a file's path as a slash (another file)."""
    for character, name in ((",", "a comma"), ("\\", "a backslash")):
        if character in str(path):
            raise StoreError(f"{what} {path} holds {name}, which DuckDB misreads (it splits file_search_path on commas "
                             f"and reads a backslash as a slash); {fix}")


def view_columns(conn: duckdb.DuckDBPyConnection, views: tuple[str, ...]) -> list:
    """The (name, type) of the columns each of `views` binds to on `conn`, over its store's files."""
    return [(name, list(zip(relation.columns, map(str, relation.types), strict=True)))
            for name, relation in ((name, conn.sql(f"FROM {name}")) for name in views)]


def catalog_digest(catalog: Path) -> str:
    """Digests of a catalog file's bytes and of its write-ahead log's, each on its own."""
    wal = catalog.with_name(catalog.name + ".wal")
    return hashlib.sha256(catalog.read_bytes()).hexdigest() + ":" + (
        hashlib.sha256(wal.read_bytes()).hexdigest() if wal.is_file() else "no write-ahead log")


def snapshot_key(copy: Path, store: Path) -> tuple[tuple[str, str], str]:
    """(what preparing `copy` (a copy of `store`'s catalog) reads: (`catalog_digest` of the copy, a digest of the
    name, size and modification time of each Parquet file of the store), a digest of each file's status-change time
    and inode as well). The first finds prepared bytes, which serve any store holding those bytes and files (a copy
    of the store); both together find an open database of this store, whose files are then the ones checked when it
    was opened (`misfit_part`): an edit that keeps a file's size and modification time changes its status-change
    time."""
    catalog = catalog_digest(copy)
    digest, identity = hashlib.sha256(), hashlib.sha256()
    for folder, _, names in sorted(os.walk(store)):
        for name in sorted(names):
            if name.endswith(".parquet"):
                try:
                    info = os.lstat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                relative = os.fsencode(os.path.relpath(os.path.join(folder, name), store))  # any bytes a name holds
                digest.update(b"\0" + relative + f"\0{info.st_size}\0{info.st_mtime_ns}".encode())
                identity.update(f"\0{info.st_ctime_ns}\0{info.st_ino}".encode())
    return (catalog, digest.hexdigest()), identity.hexdigest()


def remember_snapshot(key: tuple[str, str], copy: Path) -> None:
    if copy.with_name(copy.name + ".wal").exists():
        return  # a copy left with a write-ahead log is not one file
    data = copy.read_bytes()
    with _PREPARED_LOCK:
        while _PREPARED and sum(map(len, _PREPARED.values())) + len(data) > _PREPARED_MAX_BYTES:
            _PREPARED.pop(next(iter(_PREPARED)))  # the oldest first
        if len(data) <= _PREPARED_MAX_BYTES:
            _PREPARED[key] = data


class Store:
    """A polysem store directory. Cheap to create; nothing is opened until used.

    `trust_code`: the folder (or folders) to import the model and transform code the store names from,
    instead of the folder its first ingest recorded (`polysem.util.imports.code_folder`); default
    POLYSEM_TRUST_CODE. Only a folder outside the store is ever imported from.

    `reads`: polysem's own reads (the blocks of sql/queries.sql) as methods, each returning what its block's mark
    says: `store.reads.class_count()` -> int, `store.reads.run_by_id(run_id="...")` -> dict or None,
    `store.reads.class_list()` -> pyarrow.Table (see `Reads`); `run(name, **params)` is the same by name.
    User SQL runs with `sql(query, params)`.
    """

    def __init__(self, path: str | os.PathLike | None = None,
                 trust_code: str | os.PathLike | list[str | os.PathLike] | None = None, layer: str | None = None):
        check_path("path", path, none=True)
        if isinstance(path, str) and not path:
            raise ArgumentRange("`store` must name a folder, got an empty path (it would mean the current folder); "
                                "pass . for the current folder")
        check_text("layer", layer, none=True)
        if isinstance(trust_code, (list, tuple)):
            for folder in trust_code:
                check_path("trust_code", folder)
        else:
            check_path("trust_code", trust_code, none=True)
        self.path = Path(path) if path is not None else default_store_path()
        self.path = self.path.expanduser().absolute()
        check_duckdb_path(self.path, "the store's path", "rename the folder or choose another store")
        self.trust_code = trust_code
        self.layer = layer  # the layer commands work on; None: the store's only one (several: refused by `meta`)
        self._reader_conn: duckdb.DuckDBPyConnection | None = None
        self._reader_layers: tuple[str | None, list[str]] = (None, [])
        self._reader_stamp: tuple | None = None
        self._reader_lock = threading.Lock()
        # an attribute, not a property: completion (IPython, Jupyter, jedi) evaluates it and lists the reads
        self.reads: Reads = Reads(self)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})" if self.layer is None else f"Store({str(self.path)!r}, layer={self.layer!r})"

    def for_layer(self, layer: str | None) -> Store:
        """This store, working on `layer` (None: as this object does)."""
        check_text("layer", layer, none=True)
        if layer is None or layer == self.layer:
            return self
        return Store(self.path, self.trust_code, layer)

    @property
    def catalog_path(self) -> Path:
        return self.path / layout.CATALOG

    def exists(self) -> bool:
        return self.catalog_path.is_file()

    def require(self) -> None:
        """Refuse a missing store, and one holding a link or a special file (`query.confine`)."""
        check_tree(self.path)
        if not self.exists():
            raise StoreError(
                f"no polysem store at {self.path}; run `polysem ingest` first, or pass --store / set {STORE_ENV}"
            )

    # -- connections ---------------------------------------------------------

    @contextmanager
    def connect(self, write: bool = False, create: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection with every view and macro of `sql/` defined.

        A reader gets a cursor on an in-memory copy of the catalog (see `_reader`):
        it never holds the catalog file, so writers never wait for it. A writer opens
        the catalog itself (waiting up to 30 s for another writer), records runs left
        pending by a busy catalog and sweeps files left by a killed command. Only a
        writer with `create` (the first ingest) may open a store that is missing or was
        never completely created; every other connection refuses it (`IncompleteStore`)
        before defining anything.
        """
        check_bool("write", write)
        check_bool("create", create)
        if not write:
            cursor = self._reader().cursor()
            try:
                self._choose_layer(cursor, self._reader_layers)
                yield cursor
            finally:
                cursor.close()
            return
        if not create:
            self.require()
        self.create_directory()
        # the first ingest, which holds the store's creation lock, into a folder without a catalog (a write-ahead
        # log left without its catalog is DuckDB's to read) holding only the files creation writes
        new = (create and not self.catalog_path.exists()
               and not self.catalog_path.with_name(self.catalog_path.name + ".wal").exists()
               and layout.only_creation_files(self.path))
        if new:
            with atomic_path(self.catalog_path) as made:
                made.write_bytes(catalog_template()[0])
        conn = open_for_writing(self.catalog_path, self.path)
        checked = False
        try:
            if not new and catalog_digest(self.catalog_path) not in _CLEAN_CATALOGS:
                refuse_foreign_objects(conn, self.catalog_path.stem)  # before any of polysem's SQL runs on it
            checked = True
            if not create and not catalog_created(conn):
                raise IncompleteStore(self.path)
            # Views name their Parquet files relative to the store, so a store can be moved.
            conn.execute("SET file_search_path = ?", [str(self.path)])
            prepare_catalog(conn, self.path)  # an older format is migrated here, under the write lock
            if not create:
                self._choose_layer(conn, stored_layers(conn))
            record_pending(conn, self.path)
            sweep(conn, self.path)
            yield conn
        except duckdb.Error as error:
            if is_disk_full(error):  # DuckDB's "Error writing bytes to file ...": name the store and the fix
                raise disk_full(f"the store {self.path}", self.path) from error
            raise
        finally:
            left = None
            if checked:  # polysem writes nothing foreign: the state it leaves needs no listing
                try:  # taken while the lock keeps other writers out; closing a checkpointed catalog changes nothing
                    conn.execute("CHECKPOINT")
                    left = catalog_digest(self.catalog_path)
                except (duckdb.Error, OSError):
                    pass  # the next writer lists it
            conn.close()
            if left is not None:
                _CLEAN_CATALOGS.add(left)

    def _reader(self) -> duckdb.DuckDBPyConnection:
        """The connection user SQL runs on, rebuilt only when the catalog changed.

        It opens a private copy of the catalog read-only, so the catalog file itself is
        held only while it is copied (milliseconds) and writers never wait for a query.
        A copy of an older format, or with another polysem's SQL, is first migrated and
        given this polysem's views and macros (the copy only: reading never writes the
        store). No extension is installed or loaded and the configuration is locked.
        """
        self.require()
        current = stamp(self.catalog_path)
        with self._reader_lock:
            if self._reader_conn is None or self._reader_stamp != current:
                self._reader_conn = None  # shared with other Store objects (_OPEN): closed when the last lets go
                self._reader_conn = self._open_snapshot()
                cursor = self._reader_conn.cursor()  # the connection is shared: another thread may be reading on it
                try:
                    self._reader_layers = stored_layers(cursor)
                finally:
                    cursor.close()
                self._reader_stamp = current
            return self._reader_conn

    def _choose_layer(self, conn: duckdb.DuckDBPyConnection, layers: tuple[str | None, list[str]]) -> None:
        """Set the layer the SQL of `conn` works on (`polysem_layer`: the chosen one, else the first) and the
        layer of the files written before layers (`polysem_first_layer`); an unknown choice is refused."""
        first, names = layers
        if self.layer is not None and names and self.layer not in names:
            raise StoreError(f"the store holds no layer {self.layer!r}; its layers: {', '.join(names)} "
                             "(choose one with `layer`)")
        conn.execute("SET VARIABLE polysem_first_layer = ?", [first])
        conn.execute("SET VARIABLE polysem_layer = ?", [self.layer or first])

    def _open_snapshot(self) -> duckdb.DuckDBPyConnection:
        check_duckdb_path(Path(tempfile.gettempdir()), "the temporary folder", "set TMPDIR to another folder")
        fd, name = tempfile.mkstemp(prefix="polysem-catalog-", suffix=".duckdb")
        os.close(fd)
        copy = Path(name)
        try:
            copy_catalog(self.catalog_path, copy, self.path)
            key, identity = snapshot_key(copy, self.path)
            place = (str(self.path), key, identity)
            with _PREPARED_LOCK:
                shared = _OPEN.get(place)
                if shared is not None:
                    _OPEN.move_to_end(place)
                    return shared
            misfit = misfit_part(self.path, extra=False)  # each new state of the files, before anything reads them
            if misfit is not None:
                raise misfit
            with _PREPARED_LOCK:  # another thread may add or drop entries meanwhile
                prepared = _PREPARED.get(key)
            if prepared is not None:
                copy.with_name(copy.name + ".wal").unlink(missing_ok=True)  # folded into the prepared bytes
                copy.write_bytes(prepared)
            else:
                if not self._copy_from_template(copy):
                    self._prepare_copy(copy)
                remember_snapshot(key, copy)
            try:
                conn = quiet(duckdb.connect(str(copy), read_only=True,
                                            config={**SANDBOX, "file_search_path": str(self.path)}))
                conn.execute("SET lock_configuration = true")
            except duckdb.Error as error:
                raise damaged_catalog(self.catalog_path, error) from error
            with _PREPARED_LOCK:
                _OPEN[place] = conn
                while len(_OPEN) > _OPEN_MAX:
                    _OPEN.popitem(last=False)
        finally:
            # DuckDB keeps its handle of a read-only file; the name is not needed any more.
            copy.unlink(missing_ok=True)
            copy.with_name(copy.name + ".wal").unlink(missing_ok=True)
        return conn

    def _copy_from_template(self, copy: Path) -> bool:
        """Make `copy` (a copy of the catalog) the template (`catalog_template`) holding the copy's rows, where that is
        what preparing the copy gives: `fill_template` takes the rows, and each view that reads the store's files
        binds over them to the columns it binds to in the template. False leaves the copy as it was, for preparing
        to read (and to name what is wrong with it). Both catalogs are attached to the process's scratch
        connection: a connection of their own would cost a DuckDB instance each (about 12 ms)."""
        work = copy.with_name(copy.name + ".template")
        same = False
        try:
            template, columns = catalog_template()
            work.write_bytes(template)
            with scratch() as conn:
                conn.execute("ATTACH ? AS polysem_work", [str(work)])
                try:
                    conn.execute("ATTACH ? AS polysem_fresh (READ_ONLY)", [str(copy)])
                    conn.execute("USE polysem_work")
                    conn.execute("SET file_search_path = ?", [str(self.path)])
                    same = fill_template(conn, "polysem_fresh") and view_columns(conn, FILE_VIEWS) == columns
                    conn.execute("CHECKPOINT polysem_work")
                finally:  # the scratch connection as it was, whatever stopped the work (Ctrl-C included)
                    with contextlib.suppress(duckdb.Error):
                        conn.rollback()  # a transaction left open (none: DuckDB says so)
                    conn.execute("RESET file_search_path")
                    conn.execute("USE memory")
                    conn.execute("DETACH DATABASE IF EXISTS polysem_fresh")
                    conn.execute("DETACH polysem_work")
            if same:
                os.replace(work, copy)
                copy.with_name(copy.name + ".wal").unlink(missing_ok=True)  # its rows are in the copy's file now
            return same
        except duckdb.Error:
            return False
        finally:
            work.unlink(missing_ok=True)
            work.with_name(work.name + ".wal").unlink(missing_ok=True)

    def _prepare_copy(self, copy: Path) -> None:
        """Migrate the private copy and define this polysem's views and macros in it, always: a catalog someone
        sent may carry other definitions under polysem's names (and polysem's digest), and reads must run
        polysem's own SQL. A received catalog's macros and types, which DuckDB takes before its own functions and
        types, are set aside first, from the scratch connection (`set_aside_foreign_objects`): none of them runs."""
        try:
            with scratch() as conn:
                conn.execute("ATTACH ? AS polysem_received", [str(copy)])
                try:
                    set_aside_foreign_objects(conn, "polysem_received")
                    conn.execute("CHECKPOINT polysem_received")
                finally:
                    with contextlib.suppress(duckdb.Error):
                        conn.rollback()  # a transaction left open by Ctrl-C (none: DuckDB says so)
                    conn.execute("USE memory")
                    conn.execute("DETACH DATABASE IF EXISTS polysem_received")
        except duckdb.Error as error:
            raise damaged_catalog(self.catalog_path, error) from error
        attempt = 0
        while True:
            try:
                with duckdb.connect(str(copy), config={**SANDBOX, "file_search_path": str(self.path)}) as conn:
                    if not catalog_created(conn):  # before any view: they need files such a store may lack
                        raise IncompleteStore(self.path)
                    prepare_catalog(conn, self.path, redefine=True)  # rolled back if it fails
                return
            except duckdb.IOException as error:
                # defining the samples view reads every part's schema: a compaction that swapped the split's
                # files meanwhile (query.compact) removed one; the next attempt lists the new ones
                if attempt < 2 and "no such file" in str(error).lower():
                    attempt += 1
                    continue
                raise damaged_catalog(self.catalog_path, error) from error
            except duckdb.Error as error:
                raise damaged_catalog(self.catalog_path, error) from error

    @contextmanager
    def transaction(self, create: bool = False) -> Iterator[Transaction]:
        """Named statements on the catalog, committed together when the block ends, rolled back
        when it raises. The one way polysem records anything. `create`: the first ingest's, which
        may meet a store that is missing or was never completely created (`connect`)."""
        check_bool("create", create)
        with self.connect(write=True, create=create) as conn:
            conn.begin()
            try:
                yield Transaction(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def check_writable(self) -> None:
        """Raise unless the store exists writable or could be created; creates nothing."""
        target = self.path
        while not target.exists():
            target = target.parent
        if not target.is_dir() or not os.access(target, os.W_OK):
            raise StoreError(f"store directory {self.path} is not writable; fix its permissions or choose another --store")

    def create_directory(self) -> None:
        check_tree(self.path)
        self.check_writable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create store directory {self.path}: {error.strerror}; choose another --store") from error
        if not os.access(self.path, os.W_OK):
            raise StoreError(f"store directory {self.path} is not writable; fix its permissions or choose another --store")

    # -- metadata ------------------------------------------------------------

    def meta(self, require_complete: bool = True, *, any_layer: bool = False) -> dict[str, Any]:
        """The store's metadata: model, weights, layer, transform, dataset roots, versions; `layers` {name:
        shape} holds every layer, `layer` and `layer_shape` the one this object works on (`Store.layer`, else
        the store's only layer). A store of several layers without a choice is refused (`LayerChoice`), unless
        `any_layer` (then `layer` is its first).

        A store whose first ingest stopped before its metadata was committed (its catalog may even
        lack the store_meta table) is refused with `IncompleteStore`, unless require_complete is
        false, as ingest asks to complete it: then its partial metadata, read without defining views.
        """
        check_bool("require_complete", require_complete)
        check_bool("any_layer", any_layer)
        try:
            with self.connect() as conn:
                meta = read_meta(conn)
        except IncompleteStore:
            if require_complete:
                raise
            return self._raw_meta()
        if require_complete and not meta_complete(meta):
            raise IncompleteStore(self.path)
        return self._on_layer(meta, any_layer)

    def _on_layer(self, meta: dict[str, Any], any_layer: bool) -> dict[str, Any]:
        layers = meta.get("layers") or {}
        chosen = self.layer
        if chosen is None and len(layers) > 1 and not any_layer:
            raise LayerChoice(f"the store holds {len(layers)} layers ({', '.join(layers)}): choose one with `layer` "
                              "(in Python: polysem.Store(path, layer=NAME))")
        if chosen is not None and layers and chosen not in layers:
            raise StoreError(f"the store holds no layer {chosen!r}; its layers: {', '.join(layers)} "
                             "(choose one with `layer`)")
        if chosen is not None:
            meta["layer"], meta["layer_shape"] = chosen, layers[chosen]
        return meta

    def _raw_meta(self) -> dict[str, Any]:
        """store_meta of a private copy of the catalog, read as it is: no migration, no views."""
        fd, name = tempfile.mkstemp(prefix="polysem-catalog-", suffix=".duckdb")
        os.close(fd)
        copy = Path(name)
        try:
            copy_catalog(self.catalog_path, copy, self.path)
            try:
                with duckdb.connect(str(copy), read_only=True) as conn:
                    return read_meta(conn)
            except duckdb.Error as error:
                raise damaged_catalog(self.catalog_path, error) from error
        finally:
            copy.unlink(missing_ok=True)
            copy.with_name(copy.name + ".wal").unlink(missing_ok=True)

    # -- queries -------------------------------------------------------------

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run one read-only statement (user SQL) and return its result as an Arrow table.

        `params` are bound to `?` (a list) or `$name` (a dict). The statement runs
        in a transaction that is always rolled back, on the sandboxed in-memory
        connection of `connect()`; see `check_read_only` for what is allowed.
        """
        check_text("query", query)
        check_params("params", params)
        check_read_only(query)
        return self._read(query, params)

    def run(self, name: str, **params: Any) -> Any:
        """Polysem's own read `name` (a block of sql/queries.sql) with its parameters by name: the by-name
        form of `store.reads.NAME(**params)`, which calls it. Returns what the block's mark says: rows as an
        Arrow table, one row as a dict (or None), one value (or None)."""
        check_text("name", name)
        block, bound = bind(name, params, (READS_FILE,))
        return result(block, self._read(block.sql, bound or None))

    def _read(self, query: str, params: list | dict | None) -> pa.Table:
        for attempt in range(2):
            with self.connect() as cursor:
                cursor.begin()
                try:
                    # DuckDB's client does not see SIGINT while a query runs: the query is stopped on Ctrl-C
                    return interruptible(functools.partial(_fetch, cursor, query, params), INTERRUPTED,
                                         stop=cursor.interrupt, name="polysem-query")
                except duckdb.InterruptException as error:
                    raise KeyboardInterrupt(INTERRUPTED) from error
                except duckdb.IOException as error:
                    # a compaction swapped the split's files after this query listed them (query.compact)
                    if attempt == 0 and "no such file" in str(error).lower():
                        continue
                    raise query_error(error, self.path) from error
                except duckdb.Error as error:
                    raise query_error(error, self.path) from error
                finally:
                    cursor.rollback()
        raise AssertionError("unreachable: the second attempt returns or raises")

    def table(self, name_or_query: str, params: list | dict | None = None) -> pa.Table:
        """A table/view name or macro call as a SELECT (`runs` is `SELECT * FROM runs`, `relevant_pairs(p := 0.8)`
        is `SELECT * FROM relevant_pairs(p := 0.8)`), run by `sql` as Arrow; any other text is run as it is."""
        check_text("name_or_query", name_or_query)
        check_params("params", params)
        return self.sql(as_select(name_or_query), params)

    def export(self, name_or_query: str, out: str | os.PathLike, params: list | dict | None = None, *,
               fmt: str | None = None) -> int:
        """Write a table, view, macro call or query to Parquet, CSV or JSON (`fmt`, else the suffix's).

        Returns the number of rows written. The file appears only when complete. `out` "-" writes
        to standard output (`fmt` required; parquet only when standard output is not a terminal).
        """
        check_text("name_or_query", name_or_query)
        check_params("params", params)
        check_text("fmt", fmt, none=True)
        target = self.check_outside(out, stdout=True)
        fmt = out_format(os.fspath(out), fmt)
        result = self.table(name_or_query, params)
        write_result(result, target, fmt)
        return result.num_rows

    def info(self) -> dict[str, Any]:
        """What the store holds: its metadata (every layer in `layers`; `layer`: the one this object works on, else
        the first), images per split (of that layer; `layer_images`: {split: {layer: images}} when the store has
        several), classes, runs and size on disk."""
        info = self.meta(any_layer=True)
        info["decode"] = recorded_decode(info)  # a store made before the key: pil
        info["code"] = {what: code_status(str(info[what]), what, info.get(f"{what}_import_root"), self.path,
                                          self.trust_code) for what in ("model", "transform")}
        info["splits"] = {
            row["split"]: {"images": row["n_images"], "unreadable": row["n_errors"], "classes": row["n_classes"]}
            for row in self.reads.split_summary().to_pylist()
        }
        # with several layers, each one's images per split: a layer added later may lack a split the others hold
        info["layer_images"] = {}
        if len(info.get("layers") or {}) > 1:
            stored = {(row["layer"], row["split"]): row["n"] for row in self.reads.layer_image_counts().to_pylist()}
            info["layer_images"] = {split: {layer: stored.get((layer, split), 0) for layer in info["layers"]}
                                    for split in info["splits"]}
        info["classes"] = self.reads.class_count()
        info["runs"] = self.reads.run_count()
        info["store"] = str(self.path)
        info["size_bytes"] = self.size_bytes()
        n_images = sum(split["images"] for split in info["splits"].values())
        first = next(iter(info["layers"]), None)
        sample_bytes = sum(p.stat().st_size for split in layout.split_folders(self.path)
                           for p in layout.layer_files(self.path, split.name, info["layer"], first))
        info["bytes_per_image"] = round(sample_bytes / n_images) if n_images else None  # of the layer shown
        return info

    def class_names(self) -> dict[int, str]:
        """{class_id: name} of every class (the names every table and figure shows next to ids)."""
        return {row["class_id"]: row["name"] for row in self.reads.class_list().to_pylist()}

    def classes(self) -> pa.Table:
        """Every class with its image count in each split the store holds (n_<split> columns)."""
        if self.reads.split_summary().num_rows == 0:  # no images yet: nothing to count per split
            return self.reads.class_list()
        return self.reads.class_counts()

    def check_outside(self, out: str | os.PathLike, folder: bool = False, *, stdout: bool = False,
                      name: str = "out") -> Path | None:
        """Refuse an output path before anything is written (see `query.output_paths`): an empty one, a
        special file (FIFO, device, socket, also behind a link), anything under /dev, /proc or /sys, a
        folder where a file is expected (or the reverse), or anything inside the store, where it could
        replace a file the store reads. Returns the absolute path, or None for `-` when `stdout`."""
        check_text("name", name)
        check_path(name, out)
        check_bool("folder", folder)
        check_bool("stdout", stdout)
        return check_output(out, self.path, folder=folder, stdout=stdout, name=name)

    def check(self, repair: bool = False) -> CheckReport:
        """Verify every Parquet file's footer and row counts against the catalog; see `query.integrity`."""
        check_bool("repair", repair)
        return check_store(self, repair)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class Reads(NamedStatements):
    """`store.reads`: polysem's reads (the blocks of sql/queries.sql) as methods, run on the store's sandboxed read
    connection by `Store.run` (the by-name form), e.g. `store.reads.class_count()` -> int,
    `store.reads.run_by_id(run_id="...")` -> dict or None, `store.reads.class_list()` -> pyarrow.Table. Each takes
    its block's parameters by name and has the block's comment as its docstring."""

    FILES = (READS_FILE,)
    store: Store

    def __init__(self, store: Store):
        self.store = store

    def run(self, name: str, **params: Any) -> Any:
        return self.store.run(name, **params)

    def __repr__(self) -> str:
        return f"<{self.store!r}.reads: {len(self._blocks)} reads of sql/{READS_FILE} as methods>"


def _fetch(cursor: duckdb.DuckDBPyConnection, query: str, params: list | dict | None) -> pa.Table:
    return cursor.sql(query, params=params).to_arrow_table()


INTERRUPTED = "the query stopped before it finished; the store is unchanged"


def check(store: Store | str | os.PathLike | None, repair: bool = False) -> CheckReport:
    """`polysem check`: verify every Parquet file's footer and row counts against the catalog (`Store.check`).

    Args:
        store: the store, or its folder.
        repair: set damaged or repeating parts and forged pending records aside, rewrite the schema files,
            record pending runs and sweep leftovers.

    Returns:
        A `CheckReport`: files and rows read, `problems` (each with its fix), `repaired`, and `ok`.
    """
    return as_store(store).check(repair)


def as_store(store: Store | str | os.PathLike | None) -> Store:
    """A Store from a Store, a path, or None (POLYSEM_STORE or ./polysem-store): the one coercion."""
    if not isinstance(store, Store):
        check_path("store", store, none=True)
    return store if isinstance(store, Store) else Store(store)
