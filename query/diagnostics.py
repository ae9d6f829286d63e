"""Errors that name the damaged file and the fix, from what DuckDB or the file system said."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from polysem.errors import PolysemError, QueryError, StoreError
from polysem.query import layout

__all__ = ["damaged_catalog", "damaged_file", "first_line", "query_error"]

# DuckDB's "Catalog Error: Table with name X does not exist!" (tables, views, functions, macros)
_MISSING_NAME = re.compile(r"Catalog Error: (Table|Scalar Function|Table Function|Macro Function) with name (\w+) "
                           r"does not exist", re.IGNORECASE)
_FILE_IN_ERROR = re.compile(r"""(?:file|pattern)\s+['"]([^'"]+\.parquet)['"]""", re.IGNORECASE)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def query_error(error: duckdb.Error, store: Path) -> PolysemError:
    """The one translation of a failed query: a damaged or missing store file becomes a
    StoreError naming the file and the fix; anything else is the query's own error."""
    match = _FILE_IN_ERROR.search(str(error))
    if match:
        path = Path(match.group(1))
        path = path if path.is_absolute() else store / path
        try:
            relative = path.absolute().relative_to(store)
        except ValueError:
            relative = None
        if relative is not None:
            return damaged_file(store, relative, first_line(error))
    missing = _MISSING_NAME.search(str(error))
    if missing:
        kind, name = missing.groups()
        return QueryError(f"no {kind.lower().replace('scalar function', 'function').replace('table function', 'macro')} "
                          f"named {name} in the store; `polysem sql \"SHOW ALL TABLES\"` lists the tables and views, "
                          "docs/sql.md the macros")
    return QueryError(first_line(error))


def damaged_file(store: Path, relative: Path, why: str) -> StoreError:
    """`relative` (a path inside `store`) cannot be read: say which file and how to fix it."""
    if str(relative) == "layer_weights*.parquet":  # the glob of every layer's weight: the first layer's is missing
        relative = Path("layer_weights.parquet")
    parts = relative.parts
    in_layer = len(parts) == 4 and parts[2].startswith(layout.LAYER_PREFIX)  # samples/<split>/layer=<name>/<part>
    if parts and parts[-1] == "empty.parquet" or "*" in str(relative):  # a glob matching nothing: its schema file
        fix = f"run `polysem check --repair --store {store}` to rewrite the store's schema files"
    elif (len(parts) == 3 or in_layer) and parts[0] in layout.PART_TABLES and parts[1] != layout.SCHEMA_DIR:
        fix = (f"run `polysem check --repair --store {store}` to set it aside, then "
               f"`polysem ingest DATA_DIR --split {parts[1]}` to store its images again")
    else:
        fix = "it is written when the store is created: restore it from a backup, or ingest into a new `store`"
    return StoreError(f"{store / relative} is damaged or missing ({why}); {fix}")


def _misfit_part(store: Path) -> StoreError | None:
    """The first part file whose columns are not polysem's, named with its fix; None when all fit."""
    for table, path in layout.part_files(store):
        try:
            problem = layout.schema_problem(table, path)
        except (OSError, ValueError) as unreadable:  # pyarrow: ArrowInvalid is a ValueError
            problem = first_line(unreadable)
        if problem is not None:
            return damaged_file(store, path.relative_to(store), problem)
    return None


def damaged_catalog(catalog: Path, error: Exception) -> PolysemError:
    """The catalog cannot be opened or prepared. Defining the samples view reads every part's schema,
    so a damaged part can fail here too: that file is named, with its own fix."""
    if isinstance(error, duckdb.Error) and _FILE_IN_ERROR.search(str(error)):
        translated = query_error(error, catalog.parent)
        if isinstance(translated, StoreError):
            return translated
    if isinstance(error, duckdb.BinderException):  # a part whose columns are not polysem's (hand-edited)
        misfit = _misfit_part(catalog.parent)
        if misfit is not None:
            return misfit
    return StoreError(f"cannot open the catalog {catalog}: {first_line(error)}; restore it from a backup, "
                      "or ingest into a new `store`")
