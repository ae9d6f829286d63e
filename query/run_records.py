"""The recorded runs as tables: what `polysem runs` prints, without loading a model (no torch)."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from polysem.errors import RunError
from polysem.query.store import Store, as_store
from polysem.util.checks import check_text

__all__ = ["run_record", "runs"]


def runs(store: Store | str | os.PathLike | None) -> pa.Table:
    """`polysem runs`: every disentanglement run with its evaluation and verification, one row per run (the
    paper's quantitative table), in the order they were made.

    Args:
        store: the store, or its folder.

    Returns:
        A pyarrow.Table: run_id, channel, concepts, rho, fractions, resolved, ... (docs/store.md, `run_summaries`).

    Example:
        >>> polysem.runs(store).column("run_id").to_pylist()
        ['d1849e01ea']
    """
    store = as_store(store)
    store.require()
    return store.reads.run_summaries()


def run_record(store: Store | str | os.PathLike | None, run_id: str) -> dict[str, Any]:
    """`polysem runs RUN_ID`: one run's full record (every recorded column); an unknown run id is refused."""
    store = as_store(store)
    check_text("run_id", run_id)
    store.require()
    record = store.reads.run_record(run_id=run_id)
    if record is None:
        raise RunError(f"unknown run id '{run_id}'; `polysem runs` lists them")
    return record
