"""What `Store.transaction()` yields: polysem's named statements on the catalog, committed together."""

from __future__ import annotations

from typing import Any

import duckdb

from polysem.query.sqlfiles import run_statement, run_statement_many

__all__ = ["Transaction"]


class Transaction:
    """What `Store.transaction()` yields: polysem's named statements (sql/records.sql) on the catalog."""

    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self.conn = conn

    def run(self, name: str, **params: Any) -> list[tuple]:
        return run_statement(self.conn, name, **params).fetchall()

    def run_many(self, name: str, rows: list[dict[str, Any]]) -> None:
        run_statement_many(self.conn, name, rows)
