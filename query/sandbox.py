"""The read-only sandbox user SQL runs in: which statements are queries, by DuckDB's own parser.

The connection user SQL runs on has no extension installed or loaded (so nothing is
downloaded and no remote file system exists) and persists no secret. Local files stay
readable, which the store's own views need; `check_read_only` refuses every statement
that could write one. `lock_configuration` is set once the views exist.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import duckdb

from polysem.errors import QueryError
from polysem.query.diagnostics import first_line

__all__ = ["SANDBOX", "as_select", "check_read_only", "scratch"]

SANDBOX: dict[str, str | bool | int | float | list[str]] = {  # the type duckdb.connect takes as config
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_persistent_secrets": False,
}
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_CALL = re.compile(r"^[A-Za-z_]\w*\s*\(.*\)$", re.DOTALL)
# Query nodes a read can contain; DuckDB also parses DELETE/INSERT/UPDATE nodes inside a
# WITH of a SELECT statement and runs them.
_QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
# Table functions that run SQL given as a string, which the parser cannot see into.
_SQL_FUNCTIONS = {"query", "query_table"}
_scratch_lock = threading.Lock()
_scratch_conn: duckdb.DuckDBPyConnection | None = None
_scratch_dirty = False


@contextmanager
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    """One in-memory connection per process for parsing and copying; creating one costs ~20 ms. A use that did not
    end normally (an error or Ctrl-C, even in its own clean-up) may have left a transaction, an attached catalog,
    another default database or a file_search_path: the next use finds the connection as it was made."""
    global _scratch_conn, _scratch_dirty
    with _scratch_lock:
        if _scratch_conn is None:
            _scratch_conn = duckdb.connect(":memory:", config=SANDBOX)
            try:  # it writes private temporary copies alone, which a crash makes worthless: no fsync (a DuckDB with the setting)
                _scratch_conn.execute("SET fsync_mode = 'NONE'")
            except duckdb.Error:
                pass
        elif _scratch_dirty:
            _reset(_scratch_conn)
        _scratch_dirty = True
        yield _scratch_conn
        _scratch_dirty = False


def _reset(conn: duckdb.DuckDBPyConnection) -> None:
    try:
        conn.rollback()
    except duckdb.Error:
        pass  # no transaction was open
    conn.execute("USE memory.main")
    conn.execute("RESET file_search_path")
    for (name,) in conn.execute("SELECT database_name FROM duckdb_databases() WHERE NOT internal "
                                "AND database_name <> 'memory'").fetchall():
        quoted = '"' + name.replace('"', '""') + '"'
        conn.execute(f"DETACH DATABASE IF EXISTS {quoted}")


def check_read_only(sql: str) -> None:
    """Refuse anything but one query, classified by DuckDB's own parser.

    Allowed: SELECT, WITH ... SELECT, VALUES, FROM, TABLE, DESCRIBE, SUMMARIZE, SHOW,
    PIVOT/UNPIVOT, and EXPLAIN [ANALYZE] of one of these. Refused: every other
    statement type, a WITH holding DELETE/INSERT/UPDATE, and the `query()` and
    `query_table()` table functions.
    """
    statement = _one_statement(sql)
    try:
        kind = statement.type.name
    except ValueError:  # a statement type newer than duckdb's Python enum (UPDATE EXTENSIONS): not a query
        kind = "UNKNOWN"
    if kind == "EXPLAIN":
        check_read_only(_explained(statement.query))
    elif kind == "MULTI" and _keywords(statement.query)[:1] in (["pivot"], ["unpivot"]):
        # DuckDB plans a PIVOT as several statements, which it cannot serialise; its
        # source is a subquery, where the binder refuses DML, so only SQL strings remain.
        if _SQL_FUNCTIONS & {word for word in _words(statement.query)}:
            raise QueryError("query() and query_table() are not available here; write the query itself")
    elif kind == "SELECT":
        _check_tree(_serialised(statement.query))
    else:
        raise QueryError(
            f"{_statement_name(statement.query, kind)} is not a read-only query: queries on a store only read "
            "(SELECT, WITH, VALUES, FROM, DESCRIBE, SUMMARIZE, SHOW, PIVOT, EXPLAIN); "
            "use `polysem export` to write results to a file"
        )


def _statement_name(sql: str, kind: str) -> str:
    """A statement as its author wrote it: its leading keywords (COPY FROM DATABASE, IMPORT DATABASE,
    UPDATE EXTENSIONS), not DuckDB's statement type, which names some of these PRAGMA or has no name for
    them in the Python enum."""
    words: list[str] = []
    for _, token_kind, text in _tokens(sql):
        if token_kind != "keyword" or len(words) == 4:
            break
        words.append(text.upper())
    return " ".join(words) or kind


def _one_statement(sql: str):
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(first_line(error)) from error
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}; run them one at a time")
    return statements[0]


def _tokens(sql: str) -> list[tuple[int, str, str]]:
    """(position, kind, lower-case text) of every token but comments, by DuckDB's tokenizer."""
    found = duckdb.tokenize(sql)
    ends = [position for position, _ in found[1:]] + [len(sql)]
    return [(position, kind.name, sql[position:end].strip().lower())
            for (position, kind), end in zip(found, ends, strict=True) if kind.name != "comment"]


def _keywords(sql: str) -> list[str]:
    return [text for _, kind, text in _tokens(sql) if kind == "keyword"]


def _words(sql: str) -> list[str]:
    return [text.strip('"') for _, kind, text in _tokens(sql) if kind in ("keyword", "identifier")]


def _explained(sql: str) -> str:
    """The statement an EXPLAIN [ANALYZE] explains, to be checked like any other."""
    tokens = _tokens(sql)
    rest = 1
    if len(tokens) > 1 and tokens[1][2] in ("analyze", "analyse"):
        rest = 2
    if len(tokens) <= rest or tokens[rest][2] == "(":
        raise QueryError("EXPLAIN takes no options here; write EXPLAIN [ANALYZE] SELECT ...")
    return sql[tokens[rest][0]:]


def _serialised(sql: str) -> dict:
    with scratch() as conn:
        text = cast("tuple[str]", conn.execute("SELECT json_serialize_sql(?)", [sql]).fetchone())[0]  # always one row
    tree = json.loads(text)
    if tree.get("error"):
        raise QueryError(tree.get("error_message", "cannot parse the query"))
    return tree


def _check_tree(node) -> None:
    if isinstance(node, list):
        for item in node:
            _check_tree(item)
    elif isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _QUERY_NODES:
            verb = kind.split("_")[0]
            raise QueryError(f"{verb} inside a query is not allowed: queries on a store are read-only")
        if node.get("type") == "TABLE_FUNCTION":
            function = node.get("function", {}).get("function_name", "")
            if function.lower() in _SQL_FUNCTIONS:
                raise QueryError(f"{function}() is not available here; write the query itself")
        for value in node.values():
            _check_tree(value)


def as_select(name_or_query: str) -> str:
    text = name_or_query.strip().rstrip(";")
    if _IDENT.match(text) or _CALL.match(text):
        return f"SELECT * FROM {text}"
    return text
