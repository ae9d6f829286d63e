"""Work kept across a busy catalog (pending runs), and files left by a killed command (the sweep)."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import duckdb

from polysem.query.confine import check_tree
from polysem.query.records import record_runs
from polysem.query.transaction import Transaction
from polysem.util import atomic

__all__ = ["PENDING_SUFFIX", "record_pending", "sweep", "write_pending"]

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
    for path in sorted((store / "artifacts").glob(f"*{PENDING_SUFFIX}")):
        artifact = path.with_name(path.name[: -len(PENDING_SUFFIX)])
        if not artifact.is_file():
            continue  # swept when old; the artifact may be on its way
        rows = json.loads(path.read_text())
        ids = [run["run_id"] for run in rows.get("runs", [])]
        tx = Transaction(conn)
        (known,), = tx.run("known_runs", run_ids=ids)
        if not known:
            conn.begin()
            try:
                record_runs(tx, rows.get("runs", []), rows.get("rho_scores", []))
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            recorded += ids
        path.unlink()
    return recorded


def sweep(conn: duckdb.DuckDBPyConnection, store: Path, older_than_s: float = SWEEP_AFTER_S) -> list[Path]:
    """Remove what a killed command left: temporary files, artifacts without a run row, and
    pending records without their artifact. Only files older than `older_than_s`, so a
    command writing right now (an ingest's next part) keeps its own. Returns what went."""
    cutoff = time.time() - older_than_s
    referenced = {Path(artifact).name for (artifact,) in Transaction(conn).run("referenced_artifacts")}
    check_tree(store)  # nothing below leads out of the store
    candidates = [p for p in store.rglob(".*.tmp*") if TEMPORARY.fullmatch(p.name)]
    artifacts = store / "artifacts"
    if artifacts.is_dir():
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
