"""Work kept across a busy catalog (pending runs), and files left by a killed command (the sweep)."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import duckdb

from polysem.errors import StoreError
from polysem.query.confine import check_tree
from polysem.query.records import record_runs
from polysem.query.transaction import Transaction
from polysem.util import atomic

__all__ = ["PENDING_SUFFIX", "BadPending", "pending_records", "record_pending", "sweep", "write_pending"]

PENDING_SUFFIX = ".pending.json"
# the only names the sweep removes: atomic writes' temporary files (polysem.util.atomic.atomic_path) and
# disentangled models (polysem.method.runs), so a file of the user's that happens to lie in the store stays
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{32}\.tmp(\.npz)?")
ARTIFACT_NAME = re.compile(r"[0-9a-f]{10}\.pt")
_PENDING_TABLES = ("runs", "rho_scores")
SWEEP_AFTER_S = 60.0


def write_pending(store: Path, artifact: Path, rows: dict[str, list[dict]]) -> Path:
    """Keep the catalog rows of a finished artifact next to it until they are recorded."""
    unknown = set(rows) - set(_PENDING_TABLES)
    if unknown:
        raise ValueError(f"cannot keep rows of {sorted(unknown)} pending")
    path = store / artifact.with_name(artifact.name + PENDING_SUFFIX)
    atomic.write_text_atomic(json.dumps(rows, default=str), path)
    return path


def record_pending(conn: duckdb.DuckDBPyConnection, store: Path) -> list[str]:
    """Insert the rows of every pending artifact not yet recorded; returns the run ids recorded.

    A pending file whose runs are already in the catalog (a kill after the commit) is
    just removed, so rows are never recorded twice.
    """
    recorded = []
    for path, rows in pending_records(store):
        ids = [run["run_id"] for run in rows["runs"]]
        tx = Transaction(conn)
        if not tx.known_runs(run_ids=ids):
            conn.begin()
            try:
                record_runs(tx, rows["runs"], rows.get("rho_scores", []))
            except (KeyError, TypeError, ValueError, duckdb.Error) as error:
                conn.rollback()
                raise _bad_pending(path, f"its rows do not fit the catalog ({type(error).__name__}: {error})") \
                    from None
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            recorded += ids
        path.unlink()
    return recorded


class BadPending(StoreError):
    """A pending record polysem cannot have written (a damaged or forged artifacts/*.pending.json)."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


def _bad_pending(path: Path, why: str) -> BadPending:
    return BadPending(path, f"{path} is not a pending record polysem wrote: {why}; remove it (rm '{path}'), or let "
                            "`polysem check --repair` set it aside, then run the command again")


def pending_records(store: Path) -> list[tuple[Path, dict]]:
    """Every pending record of the store that has its model beside it, with its rows, checked before any is used: JSON holding `runs`, a list
    of runs each with a run id and this record's own model file (`artifacts/<id>.pt`), and optionally
    `rho_scores`, a list of rows. Anything else is refused (`BadPending`) naming the file and the fix."""
    records = []
    for path in sorted((store / "artifacts").glob(f"*{PENDING_SUFFIX}")):
        own = f"artifacts/{path.name[: -len(PENDING_SUFFIX)]}"
        if not (store / own).is_file():
            continue  # no model beside it: a leftover the sweep removes, or a model on its way
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise _bad_pending(path, f"it is not JSON ({type(error).__name__})") from None
        runs = rows.get("runs") if isinstance(rows, dict) else None
        if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
            raise _bad_pending(path, "it holds no list of runs")
        if any(not isinstance(run.get("run_id"), str) or run.get("artifact") != own for run in runs):
            raise _bad_pending(path, f"a run in it has no run id or names a model file other than {own}")
        if not isinstance(rows.get("rho_scores", []), list) or set(rows) - set(_PENDING_TABLES):
            raise _bad_pending(path, "it holds rows of tables polysem never keeps pending")
        records.append((path, rows))
    return records


def sweep(conn: duckdb.DuckDBPyConnection, store: Path, older_than_s: float = SWEEP_AFTER_S) -> list[Path]:
    """Remove what a killed command left: temporary files, artifacts without a run row, and
    pending records without their artifact. Only files older than `older_than_s`, so a
    command writing right now (an ingest's next part) keeps its own. Returns what went."""
    cutoff = time.time() - older_than_s
    artifacts_named = Transaction(conn).referenced_artifacts().column("artifact").to_pylist()
    referenced = {Path(artifact).name for artifact in artifacts_named}
    check_tree(store)  # nothing below leads out of the store
    candidates = [p for p in store.rglob(".*.tmp*") if TEMPORARY.fullmatch(p.name)]
    artifacts = store / "artifacts"
    # a run row naming another file (an edited catalog) would make its real model look unreferenced: then no
    # model is removed (`polysem check` names the row)
    trusted = all(isinstance(a, str) and re.fullmatch(r"artifacts/[0-9a-f]{10}\.pt", a) for a in artifacts_named)
    if artifacts.is_dir() and trusted:
        candidates += [p for p in artifacts.glob("*.pt") if ARTIFACT_NAME.fullmatch(p.name)
                       and p.name not in referenced and not p.with_name(p.name + PENDING_SUFFIX).exists()]
        candidates += [p for p in artifacts.glob(f"*{PENDING_SUFFIX}")
                       if ARTIFACT_NAME.fullmatch(p.name[: -len(PENDING_SUFFIX)])
                       and not p.with_name(p.name[: -len(PENDING_SUFFIX)]).exists()]
    removed = []
    for path in candidates:
        try:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass  # its writer renamed or removed it meanwhile
    return removed
