"""Errors that name the damaged file and the fix, from what DuckDB or the file system said."""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

from polysem.errors import PolysemError, QueryError, StoreError
from polysem.query import layout

__all__ = ["damaged_catalog", "damaged_file", "first_line", "misfit_part", "query_error"]

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
    if layout.is_schema_file(relative) or "*" in str(relative):  # a glob matching nothing: its schema file
        fix = f"run `polysem check --repair --store {store}` to rewrite the store's schema files"
    elif (split := layout.part_split(relative)) is not None:
        fix = (f"run `polysem check --repair --store {store}` to set it aside, then "
               f"`polysem ingest DATA_DIR --split {split}` to store its images again")
    elif len(parts) >= 2 and parts[0] in layout.PART_TABLES and relative.suffix == ".parquet":
        fix = f"run `polysem check --repair --store {store}` to set it aside (polysem never writes a part there)"
    else:
        fix = "it is written when the store is created: restore it from a backup, or ingest into a new `store`"
    return StoreError(f"{store / relative} is damaged or missing ({why}); {fix}")


# Part files whose columns were found to be polysem's, by path and by what a change to the file changes (size,
# modification and status-change times, inode): a reader checks each new state's parts, and reads one footer per
# file new since the last check, not one per file of the store.
_FITTING: set[tuple[str, int, int, int, int, bool]] = set()
_FITTING_MAX = 1 << 16


def misfit_part(store: Path, extra: bool = True) -> StoreError | None:
    """The first part file whose columns are not polysem's (`layout.schema_problem`; a column more only where
    `extra`), or that cannot be read, named with its fix; None when all fit. The samples view reads its parts by
    name (`union_by_name`): a part missing `target`, or holding it under another name or type, would read as NULL
    or mixed values instead of failing, while a column more only shows as a column of its own."""
    for table, path in layout.part_files(store):
        try:
            info = os.stat(path)
        except OSError:
            continue  # gone meanwhile (a compaction swapped the split's files): the view does not read it
        seen = (str(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, extra)
        if seen in _FITTING:
            continue
        try:
            problem = layout.schema_problem(table, path, extra=extra)
        except layout.UNREADABLE as unreadable:
            if not os.path.lexists(path):
                continue  # removed after its stat: a compaction swapped in the same rows
            problem = first_line(unreadable)
        if problem is not None:
            return damaged_file(store, path.relative_to(store), problem)
        if len(_FITTING) >= _FITTING_MAX:
            _FITTING.clear()
        _FITTING.add(seen)
    return None


def damaged_catalog(catalog: Path, error: Exception) -> PolysemError:
    """The catalog cannot be opened or prepared. Defining the samples view reads every part's schema,
    so a damaged part can fail here too: that file is named, with its own fix."""
    if isinstance(error, duckdb.Error) and _FILE_IN_ERROR.search(str(error)):
        translated = query_error(error, catalog.parent)
        if isinstance(translated, StoreError):
            return translated
    if isinstance(error, duckdb.BinderException):  # a part whose columns are not polysem's (hand-edited)
        misfit = misfit_part(catalog.parent)
        if misfit is not None:
            return misfit
    return StoreError(f"cannot open the catalog {catalog}: {first_line(error)}; restore it from a backup, "
                      "or ingest into a new `store`")
