"""Opening the catalog: for writing under DuckDB's lock (waiting for another writer), or as a
private read-only copy taken under the shared lock, so a long query never holds the catalog."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import duckdb

from polysem.errors import StoreBusy
from polysem.query.diagnostics import damaged_catalog
from polysem.query.sandbox import SANDBOX, scratch

__all__ = ["READ_WAIT_S", "WRITE_WAIT_S", "copy_catalog", "open_for_writing", "quiet", "stamp"]

WRITE_WAIT_S = 30.0
READ_WAIT_S = 5.0


def is_lock_error(error: Exception) -> bool:
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def open_for_writing(catalog: Path, store: Path) -> duckdb.DuckDBPyConnection:
    """The catalog opened read-write, waiting up to WRITE_WAIT_S for another writer."""
    deadline = time.monotonic() + WRITE_WAIT_S
    while True:
        try:
            return quiet(duckdb.connect(str(catalog), config=SANDBOX))  # no extension loads on demand
        except duckdb.Error as error:
            if not is_lock_error(error):
                raise damaged_catalog(catalog, error) from error
            if time.monotonic() > deadline:
                raise StoreBusy(
                    f"cannot write to {store}: {holder(error)} holds its catalog; try again when it finishes"
                ) from error
            time.sleep(0.2)


def quiet(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """No progress bar of DuckDB's own: it would print into results piped from stdout. In a Jupyter
    kernel without ipywidgets DuckDB refuses to change the setting, and shows no bar there anyway."""
    try:
        conn.execute("SET enable_progress_bar = false")
    except duckdb.InvalidInputException:
        pass
    return conn


def copy_catalog(catalog: Path, copy: Path, store: Path) -> None:
    """Copy the catalog (and its write-ahead log) while DuckDB's shared lock keeps writers out."""
    deadline = time.monotonic() + READ_WAIT_S
    while True:
        try:
            with scratch() as conn:
                conn.execute("ATTACH ? AS polysem_catalog (READ_ONLY)", [str(catalog)])
                try:
                    shutil.copyfile(catalog, copy)
                    wal = catalog.with_name(catalog.name + ".wal")
                    if wal.is_file():
                        shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
                finally:
                    conn.execute("DETACH polysem_catalog")
            return
        except duckdb.Error as error:
            if not is_lock_error(error):
                raise damaged_catalog(catalog, error) from error
            if time.monotonic() > deadline:
                raise StoreBusy(
                    f"cannot read {store}: {holder(error)} has held its catalog for writing "
                    f"for over {READ_WAIT_S:.0f} s; try again when it finishes"
                ) from error
            time.sleep(0.1)


def holder(error: Exception) -> str:
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


def stamp(catalog: Path) -> tuple:
    """Changes whenever a writer commits: the catalog's and its write-ahead log's stat."""
    stamp: list[tuple[int, int, int] | None] = []
    for path in (catalog, catalog.with_name(catalog.name + ".wal")):
        try:
            st = path.stat()
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)
