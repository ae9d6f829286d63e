"""The one serialiser: Arrow results as CSV, JSON or Parquet text and files, for the terminal and `--out`.

JSON is strict everywhere (NaN and infinities are null; a run's `parameters`, JSON text in the
store, are the object they hold); CSV writes NULL as empty, lists and objects as JSON and booleans
as true/false, as DuckDB's own CSV does.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from polysem.errors import QueryError
from polysem.util import atomic

__all__ = ["FILE_FORMATS", "out_format", "strict", "to_csv", "to_json", "write_result"]

FILE_FORMATS = ("parquet", "csv", "json")


def out_format(out: str | Path, fmt: str | None = None) -> str:
    """The format a result file is written in: `fmt` when given, else the one its suffix names."""
    if fmt is not None:
        if fmt not in FILE_FORMATS:
            raise QueryError(f"format must be one of {', '.join(FILE_FORMATS)} for a file, got '{fmt}'")
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FILE_FORMATS:
        raise QueryError(f"cannot tell the format of {out}: name a .parquet, .csv or .json file, or give the format")
    return suffix


def strict(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null; JSON text held in a column becomes its value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [strict(v) for v in value]
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    return value


def to_json(result: pa.Table) -> str:
    rows = strict(result.to_pylist())
    for row in rows:  # a run's parameters are JSON text in the store: give them as the object they are
        if isinstance(row.get("parameters"), str):
            row["parameters"] = json.loads(row["parameters"])
    return json.dumps(rows, default=str, allow_nan=False)


def to_csv(result: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.column_names)
    for row in result.to_pylist():
        writer.writerow([_csv_cell(row[n]) for n in result.column_names])
    return buffer.getvalue()


def _csv_cell(value):
    """Empty for NULL; lists and objects as JSON and booleans as true/false, as DuckDB's own CSV writes them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(strict(value), default=str)
    return value


def write_result(result: pa.Table, out: Path, fmt: str) -> None:
    """Write an Arrow table as parquet, csv or json, atomically."""
    if fmt == "parquet":
        atomic.write_atomic(result, out)
        return
    atomic.write_text_atomic(to_csv(result) if fmt == "csv" else to_json(result) + "\n", out)
