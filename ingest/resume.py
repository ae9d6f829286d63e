"""Resuming: which of a split's images are already stored, and which are this rank's to do."""

from __future__ import annotations

from pathlib import Path

import duckdb

from polysem.query import layout
from polysem.query.diagnostics import query_error
from polysem.query.sqlfiles import run_statement
from polysem.util.images import ImageRecord

__all__ = ["remaining", "stored_ids"]


def stored_ids(store_path: Path, split: str, layer: str, first_layer: str | None) -> set[int]:
    """Ids of the split's images already in complete parts of `layer`. Unreadable images are not among
    them: a later ingest tries them again (the file may have been repaired)."""
    files = layout.layer_files(store_path, split, layer, first_layer)
    if not files:
        return set()
    try:
        with duckdb.connect() as con:
            rows = run_statement(con, "parquet_image_ids", files=[str(f) for f in files]).fetchnumpy()["image_id"]
    except duckdb.Error as error:
        raise query_error(error, store_path) from error
    return set(rows.tolist())


def remaining(records: list[ImageRecord], stored: set[int]) -> list[ImageRecord]:
    """The images not stored yet, in listing order (each rank takes every world_size-th); images listed as
    unreadable are not stored, so they are tried again (the file may have been repaired)."""
    return [r for r in records if r.image_id not in stored]
