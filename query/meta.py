"""The store's metadata (`store_meta`): what it holds, and which format wrote it."""

from __future__ import annotations

import json
from typing import Any

import duckdb

__all__ = ["STORE_FORMAT", "REQUIRED_META", "dataset_root_key", "meta_complete", "read_meta", "write_meta",
           "stored_digest"]

STORE_FORMAT = 2  # 2: classes.logit, samples.predicted_logit, per-split dataset roots
# the metadata a store must hold to count as created (written in one transaction by the first ingest)
REQUIRED_META = ("format", "model", "weights", "weights_sha256", "layer", "layer_shape", "transform",
                 "polysem_version", "created_at")


def dataset_root_key(split: str) -> str:
    """Each split's dataset root is its own key, so ingests of two splits never overwrite each other's."""
    return f"dataset_root:{split}"


def meta_complete(meta: dict[str, Any]) -> bool:
    return all(key in meta for key in REQUIRED_META)


def stored_digest(conn: duckdb.DuckDBPyConnection) -> str | None:
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
