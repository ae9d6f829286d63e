"""What `Store.transaction()` yields: polysem's writes (sql/records.sql) as methods on the catalog, committed together."""

from __future__ import annotations

from polysem.query.sqlfiles import WRITES_FILE, Statements

__all__ = ["Transaction"]


class Transaction(Statements):
    """What `Store.transaction()` yields: the blocks of sql/records.sql as methods on the catalog (`conn`), e.g.
    `tx.put_meta(key="model", value='"resnet18"')`, `tx.known_runs(run_ids=[...])` -> int, and for a block
    marked '*!' `tx.insert_run(rows)`, a list of parameter dicts. `tx.run(name, **params)` and
    `tx.run_many(name, rows)` are the by-name forms the methods call."""

    FILES = (WRITES_FILE,)
