"""The one serialiser: Arrow results as CSV, JSON or Parquet text and files, for the terminal and `--out`.

JSON is strict everywhere (NaN and infinities are null; a run's `parameters`, JSON text in the
store, are the object they hold); CSV writes NULL as empty, lists and objects as JSON and booleans
as true/false, as DuckDB's own CSV does, and text with its control and bidirectional characters
escaped (JSON escapes them itself); a text cell a spreadsheet would run as a formula is quoted
and prefixed with `'` (`_csv_text`). `-` as the output is standard output.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polysem.errors import QueryError
from polysem.util import atomic
from polysem.util.text import escape_controls

__all__ = ["FILE_FORMATS", "out_format", "strict", "to_csv", "to_json", "write_result"]

FILE_FORMATS = ("parquet", "csv", "json")


def out_format(out: str | Path, fmt: str | None = None) -> str:
    """The format a result file is written in: `fmt` when given, else the one its suffix names.

    Standard output (`-`) has no suffix: it needs `fmt`; parquet (binary) goes there only when
    standard output is not a terminal (a pipe or a file)."""
    if fmt is not None:
        if fmt not in FILE_FORMATS:
            raise QueryError(f"format must be one of {', '.join(FILE_FORMATS)} for a file, got '{fmt}'")
        if fmt == "parquet" and str(out) == "-" and _stdout_is_terminal():
            raise QueryError("parquet is binary and standard output is a terminal: redirect it (> result.parquet, "
                             "| another program) or give a file name")
        return fmt
    if str(out) == "-":
        raise QueryError("standard output has no suffix to tell the format: give `fmt` (parquet, csv or json)")
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
    lines = [_csv_line([_csv_text(n) for n in result.column_names])]
    for row in result.to_pylist():
        lines.append(_csv_line([_csv_cell(row[n]) for n in result.column_names]))
    return "".join(lines)


# The first characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection"): `=cmd|' /C
# calc'!A0` would start a program when the file is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Quoted(str):
    """A cell written between quotes whatever it holds: a formula made inert stays one text cell."""


def _csv_text(text: str) -> str:
    """Text as a CSV cell: control and bidirectional characters escaped, and a formula made inert."""
    if text.startswith(FORMULA_STARTS):
        return _Quoted("'" + escape_controls(text))
    return escape_controls(text)


def _csv_cell(value) -> str:
    """Empty for NULL; lists and objects as JSON and booleans as true/false, as DuckDB's own CSV writes them;
    text as `_csv_text` writes it; numbers as Python's csv writes them (a negative number stays a number)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(strict(value), default=str)  # escapes control characters itself (ensure_ascii)
    if isinstance(value, str):
        return _csv_text(value)
    return str(value)


def _csv_line(cells: list[str]) -> str:
    """One CSV line as Python's csv writes it with minimal quoting (a lone empty cell quoted, so the line is
    not blank), with the cells of `_Quoted` always quoted, which the csv module cannot do per cell."""
    if len(cells) == 1 and cells[0] == "":
        return '""\n'
    return ",".join(_csv_quoted(c) if isinstance(c, _Quoted) or any(ch in c for ch in ',"\r\n') else c
                    for c in cells) + "\n"


def _csv_quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed: not a terminal
        return False


def write_result(result: pa.Table, out: Path | None, fmt: str) -> None:
    """Write an Arrow table as parquet, csv or json, atomically; `out` None: to standard output."""
    if out is None:
        _write_stdout(result, fmt)
        return
    if fmt == "parquet":
        atomic.write_atomic(result, out)
        return
    atomic.write_text_atomic(to_csv(result) if fmt == "csv" else to_json(result) + "\n", out)


def _write_stdout(result: pa.Table, fmt: str) -> None:
    if fmt != "parquet":
        sys.stdout.write(to_csv(result) if fmt == "csv" else to_json(result) + "\n")
        sys.stdout.flush()
        return
    buffer = pa.BufferOutputStream()
    pq.write_table(result, buffer, compression="zstd")
    sys.stdout.flush()
    sys.stdout.buffer.write(buffer.getvalue().to_pybytes())
    sys.stdout.buffer.flush()
