"""Results as files: the format an output path asks for, and the one writer of Parquet, CSV and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa

from polysem.errors import QueryError
from polysem.util import atomic

__all__ = ["export_format", "write_result"]


def export_format(out: Path) -> str:
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in {"parquet", "csv", "json"}:
        raise QueryError(f"cannot tell the format of {out}: use a .parquet, .csv or .json file name")
    return suffix


def write_result(result: pa.Table, out: Path, fmt: str) -> None:
    """Write an Arrow table as parquet/csv/json, atomically (the store's one atomic write)."""
    if fmt == "parquet":
        atomic.write_atomic(result, out)
        return
    with atomic.atomic_path(out) as tmp:
        if fmt == "csv":
            duckdb.from_arrow(result).write_csv(str(tmp))
        else:
            with open(tmp, "w") as handle:
                json.dump(result.to_pylist(), handle, default=str)
