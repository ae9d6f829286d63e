"""Printing Arrow results as a rich table, CSV or JSON: the one place results are formatted."""

from __future__ import annotations

import csv
import io
import json
import math
import sys

import pyarrow as pa
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "csv", "json")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_cell(v) for v in value[:6])
        return f"[{shown}, ...] ({len(value)})" if len(value) > 6 else f"[{shown}]"
    return str(value)


def to_json(result: pa.Table) -> str:
    return json.dumps(result.to_pylist(), default=str)


def to_csv(result: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.column_names)
    for row in result.to_pylist():
        writer.writerow(["" if row[n] is None else row[n] for n in result.column_names])
    return buffer.getvalue()


def render(result: pa.Table, fmt: str = "table", title: str | None = None) -> None:
    """Print a result to stdout in the chosen format."""
    if fmt == "json":
        sys.stdout.write(to_json(result) + "\n")
    elif fmt == "csv":
        sys.stdout.write(to_csv(result))
    else:
        table = Table(title=title)
        for name in result.column_names:
            table.add_column(name, no_wrap=True)
        for row in result.to_pylist():
            # Text, not str: a value like [blue] is data, not rich markup
            table.add_row(*(Text(_cell(row[name])) for name in result.column_names))
        console = Console()
        if not console.is_terminal:  # piped or captured: no terminal width to respect
            console = Console(width=240)
        console.print(table)
        console.print(f"{result.num_rows} row{'s' if result.num_rows != 1 else ''}", style="dim")
