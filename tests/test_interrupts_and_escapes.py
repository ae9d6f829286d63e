"""Messages on the output side: statements DuckDB's enum does not name, Ctrl-C on a long query, a full
disk, and control or bidirectional characters in names, each one clear line or shown escaped."""

from __future__ import annotations

import _thread
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polysem.errors import DiskFull
from polysem.query import Store
from polysem.util import atomic
from tests.helpers import ROOT, assert_refused, snapshot, wait_until_the_query_runs

LONG_QUERY = "SELECT i FROM range(100000000000) t(i) WHERE hash(i) = 0"  # hours, streaming, no result


# -- statements that are no read-only query -------------------------------------------------------

@pytest.mark.parametrize("sql, named", [
    ("UPDATE EXTENSIONS", "UPDATE EXTENSIONS"),          # DuckDB's Python enum has no name for it
    ("UPDATE EXTENSIONS (httpfs)", "UPDATE EXTENSIONS"),
    ("COPY FROM DATABASE a TO b", "COPY FROM DATABASE"),  # DuckDB calls it PRAGMA
    ("IMPORT DATABASE '/tmp/nothing'", "IMPORT DATABASE"),
    ("EXPLAIN ANALYZE DELETE FROM runs", "DELETE FROM"),
])
def test_statements_are_named_as_written(cli, colour_store, sql, named):
    before = snapshot(colour_store)
    result = cli("sql", sql, "--store", colour_store)
    assert_refused(result, f"{named} is not a read-only query", "polysem export")
    assert "PRAGMA" not in result.output and "StatementType" not in result.output
    assert snapshot(colour_store) == before


# -- Ctrl-C ---------------------------------------------------------------------------------------

def once_the_long_query_runs(monkeypatch, then) -> None:
    """Call `then(cursor)` from another thread once LONG_QUERY runs on `cursor`: once this process has used 0.2 s
    of CPU since the query was handed to DuckDB (nothing else here works meanwhile; the query takes hours). The
    Store's queries run through `_fetch`, which this wraps."""
    import polysem.query.store as store_module

    fetch = store_module._fetch

    def watched_fetch(cursor, query, params):
        started = time.process_time()

        def watch():
            deadline = time.monotonic() + 60
            while time.process_time() - started < 0.2 and time.monotonic() < deadline:
                time.sleep(0.01)
            then(cursor)

        if query == LONG_QUERY:
            threading.Thread(target=watch, daemon=True).start()
        return fetch(cursor, query, params)

    monkeypatch.setattr(store_module, "_fetch", watched_fetch)


def ctrl_c(cursor) -> None:
    """A KeyboardInterrupt in the main thread, as Ctrl-C delivers it."""
    _thread.interrupt_main()


def test_ctrl_c_stops_a_long_query_in_process(colour_store, monkeypatch, python_sigint):
    store = Store(colour_store)
    before = snapshot(colour_store)
    once_the_long_query_runs(monkeypatch, ctrl_c)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="the query stopped before it finished; the store is unchanged"):
        store.sql(LONG_QUERY)
    assert time.monotonic() - started < 30
    assert store.sql("SELECT count(*) AS n FROM classes").column("n")[0].as_py() == 3  # still usable
    assert snapshot(colour_store) == before


def test_an_interrupt_from_duckdb_is_a_keyboard_interrupt(colour_store, monkeypatch):
    """A query interrupted by another thread calling its connection's interrupt(), outside the main thread
    (where the query runs directly on its cursor), is the same KeyboardInterrupt."""
    once_the_long_query_runs(monkeypatch, lambda cursor: cursor.interrupt())
    store = Store(colour_store)
    before = snapshot(colour_store)
    caught = {}

    def worker():
        try:
            store.sql(LONG_QUERY)
        except BaseException as error:  # noqa: BLE001  inspected below
            caught["error"] = error

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(caught.get("error"), KeyboardInterrupt), caught
    assert "the store is unchanged" in str(caught["error"])
    assert snapshot(colour_store) == before


def test_ctrl_c_on_the_command_line_exits_130(cli, colour_store, monkeypatch, python_sigint):
    before = snapshot(colour_store)
    once_the_long_query_runs(monkeypatch, ctrl_c)
    result = cli("sql", LONG_QUERY, "--store", colour_store)
    assert result.exit_code == 130, result.output
    assert result.output.strip() == "Interrupted: the query stopped before it finished; the store is unchanged."
    assert snapshot(colour_store) == before


def test_sigint_to_polysem_sql_exits_130(colour_store):
    before = snapshot(colour_store)
    proc = subprocess.Popen([sys.executable, "-m", "polysem.cli", "sql", LONG_QUERY, "--store", str(colour_store)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until_the_query_runs(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "Interrupted: the query stopped before it finished; the store is unchanged.", err
    assert out == ""
    assert snapshot(colour_store) == before


# -- a full disk ----------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 kB tmpfs (the tests run as root); where mount is not possible, os.fsync raises ENOSPC."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if mounted:
        yield folder, None
        subprocess.run(["umount", str(folder)], check=True)
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        yield folder, full


def test_a_full_disk_names_the_file_the_space_and_the_fix(cli, colour_store, tiny_disk, monkeypatch):
    folder, fake = tiny_disk
    if fake:
        monkeypatch.setattr(atomic.os, "fsync", fake)
    before = snapshot(colour_store)
    out = folder / "big.csv"
    result = cli("sql", "SELECT repeat('x', 1000) AS text FROM range(1000)", "--out", out, "--store", colour_store)
    assert_refused(result, f"no space left on the disk holding {out}", "free", "about 1.0 MB needed",
                   "free space on that disk (or write to another disk) and run the command again")
    assert "Error writing" not in result.output and "Errno" not in result.output
    assert list(folder.iterdir()) == []  # the temporary file is gone
    assert snapshot(colour_store) == before


def test_a_full_disk_under_the_catalog_names_the_store(colour_store, monkeypatch):
    """DuckDB's own message for a full disk, raised while the catalog is open for writing."""
    store = Store(colour_store)
    with pytest.raises(DiskFull, match=f"no space left on the disk holding the store {colour_store}") as caught:
        with store.connect(write=True):
            raise duckdb.IOException('Error writing bytes to file "catalog.duckdb.wal": No space left on device')
    assert "free space on that disk" in str(caught.value)


def test_a_parquet_write_on_a_full_disk(tiny_disk, monkeypatch):
    folder, fake = tiny_disk
    if fake:
        monkeypatch.setattr(atomic.os, "fsync", fake)
    table = pa.table({"x": [os.urandom(64).hex() for _ in range(5000)]})
    with pytest.raises(DiskFull, match=f"no space left on the disk holding {folder / 'part.parquet'}"):
        atomic.write_atomic(table, folder / "part.parquet")
    assert list(folder.iterdir()) == []


# -- control and bidirectional characters ---------------------------------------------------------

EVIL = "blue\u202eeulb\u200f\x1b[31m\r\n\tend"
SHOWN = "blue\\u202eeulb\\u200f\\x1b[31m\\r\\n\\tend"


@pytest.fixture
def evil_store(colour_store):
    """The colour store with class 0 named EVIL (its classes.parquet rewritten)."""
    path = colour_store / "classes.parquet"
    table = pq.read_table(path)
    names = table.column("name").to_pylist()
    names[table.column("class_id").to_pylist().index(0)] = EVIL
    atomic.write_atomic(table.set_column(table.column_names.index("name"), "name",
                                         pa.array(names, table.schema.field("name").type)), path)
    return colour_store


def _raw(text: str) -> bool:
    return any(c in text for c in "\u202e\u200f\x1b\r\t")


def test_terminal_tables_show_names_escaped(cli, evil_store):
    for args in (["classes"], ["sql", "SELECT name FROM classes"]):
        result = cli(*args, "--store", evil_store)
        assert result.exit_code == 0, result.output
        assert SHOWN in result.stdout and not _raw(result.stdout), result.stdout


def test_csv_shows_names_escaped(cli, evil_store, tmp_path):
    shown = cli("classes", "--format", "csv", "--store", evil_store)
    assert SHOWN in shown.stdout and not _raw(shown.stdout)
    assert len(shown.stdout.splitlines()) == 4  # header and three classes: no row broken by \r\n
    out = tmp_path / "classes.csv"
    assert cli("export", "classes", "--out", out, "--store", evil_store).exit_code == 0
    assert SHOWN in out.read_text() and not _raw(out.read_text())


def test_json_keeps_the_name_and_escapes_it(cli, evil_store):
    shown = cli("classes", "--format", "json", "--store", evil_store)
    assert "\\u202e" in shown.stdout and not _raw(shown.stdout)
    assert EVIL in [row["name"] for row in json.loads(shown.stdout)]


def test_the_report_shows_names_escaped(cli, evil_store, tmp_path):
    result = cli("report", "--out", tmp_path / "report", "--device", "cpu", "--store", evil_store)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "blue\\u202eeulb\\u200f\\x1b[31m\\r\\n\\tend" in page and not _raw(page)
