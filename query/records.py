"""One recorder per recorded table: each writes its rows with the named statements of sql/records.sql (methods
of the transaction), inside a `Store.transaction()` that the caller opens (so several recorders commit together)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from polysem.query.transaction import Transaction

__all__ = [
    "now",
    "record_channel_concepts",
    "record_class_similarity",
    "record_evaluations",
    "record_runs",
    "record_verification",
    "record_visualizations",
]


def now() -> datetime:
    """The time recorded with a row: UTC, without a zone (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def record_evaluations(tx: Transaction, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Replace a run's `evaluations` (one row per concept)."""
    tx.delete_evaluations(run_id=run_id)
    tx.insert_evaluation([{"run_id": run_id, **row} for row in rows])


def record_verification(tx: Transaction, row: dict[str, Any]) -> None:
    """Replace a run's row of `verifications`."""
    tx.delete_verification(run_id=row["run_id"])
    tx.insert_verification(**row)


def record_visualizations(tx: Transaction, key: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Replace the `visualizations` with these settings (`key`: run_id, channel, method, steps, size,
    seed); returns the images of the rows replaced, for the caller to remove once committed."""
    old = tx.visualization_images(**key).column("image").to_pylist()
    tx.delete_visualizations(**key)
    tx.insert_visualization([{**key, **row} for row in rows])
    return old


def record_channel_concepts(tx: Transaction, key: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Replace the `channel_concepts` of one parameter set (`key`: tau, p, gamma, split, correct_only);
    none at these settings is an answer too: the old rows go, nothing is added."""
    tx.delete_channel_concepts(**key)
    tx.insert_channel_concepts([{**key, **row} for row in rows])


def record_class_similarity(tx: Transaction, rows: list[dict[str, Any]]) -> None:
    """Insert or replace class pairs' WordNet similarity in `class_similarity`."""
    tx.put_class_similarity(rows)


def record_runs(tx: Transaction, runs: list[dict[str, Any]], scores: list[dict[str, Any]]) -> None:
    """Insert disentanglement runs and their rho scores (`runs`, `rho_scores`)."""
    tx.insert_run([{**run, "parameters": _json_text(run["parameters"]), "layer": run.get("layer")} for run in runs])
    tx.insert_rho_score(scores)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
