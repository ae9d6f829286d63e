"""Loads the named SQL blocks of `sql/*.sql`: every statement polysem runs is one of them.

A block is:

    -- name: relevant_pairs
    -- (channel, class) pairs whose relevance fraction reaches p.
    CREATE OR REPLACE MACRO relevant_pairs(...) AS TABLE ...;

Three kinds of file:
- definitions (SQL_FILES): each block creates exactly the object it is named after; applied to
  every catalog (`apply_blocks`);
- statements (STATEMENT_FILES, aiosql's way): each block is one statement with named parameters
  (`$name`), run by name (`Store.run`, `Transaction.run`, `run_statement`);
- migrations (MIGRATION_FILE): `migrate_N` brings a catalog of format N-1 to N.

The loader checks every block when it reads the files (a definition creates its name; a statement
is one statement; a migration's number follows the last), so a malformed block fails with its file
and line before anything touches a store; a call with a missing or unknown parameter fails naming
the block.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from polysem.errors import PolysemError

# Order matters: later files use objects of earlier ones.
SQL_FILES = ("tables.sql", "store_views.sql", "screening_macros.sql", "disentangle_macros.sql", "evaluation_macros.sql")
STATEMENT_FILES = ("queries.sql", "records.sql")
MIGRATION_FILE = "migrations.sql"
_PARAMETER = re.compile(r"\$([A-Za-z_]\w*)")
_MIGRATION = re.compile(r"^migrate_(\d+)$")

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")
_CREATE = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(TABLE|VIEW|MACRO)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SqlBlock:
    name: str
    kind: str  # TABLE, VIEW or MACRO (definitions), STATEMENT or MIGRATION
    doc: str
    sql: str
    file: str
    line: int

    def temp_sql(self) -> str:
        """The same statement creating a TEMP object (for read-only connections)."""
        return re.sub(r"^\s*CREATE\s+OR\s+REPLACE\s+", "CREATE OR REPLACE TEMP ", self.sql, count=1, flags=re.IGNORECASE)


class SqlFileError(PolysemError):
    pass


def parse_sql(text: str, file: str, kind: str = "definition") -> list[SqlBlock]:
    """Split one file's text into its named blocks, validating each as a `kind` block
    (definition, statement or migration)."""
    blocks: list[SqlBlock] = []
    current: tuple[str, int] | None = None
    lines: list[str] = []

    def close() -> None:
        if current is None:
            return
        name, line = current
        doc = [ln[2:].strip() for ln in lines if ln.startswith("--")]
        body = "\n".join(ln for ln in lines if not ln.startswith("--")).strip()
        where = f"{file}:{line}"
        if not body:
            raise SqlFileError(f"{where}: block '{name}' is empty; give it one CREATE statement")
        if not doc:
            raise SqlFileError(f"{where}: block '{name}' has no doc comment; say what it returns")
        if kind != "definition":
            blocks.append(_statement_block(name, kind, " ".join(doc), body, where, file, line))
            return
        match = _CREATE.match(body)
        if not match:
            raise SqlFileError(f"{where}: block '{name}' must be one CREATE TABLE/VIEW/MACRO statement")
        if match.group(2).lower() != name.lower():
            raise SqlFileError(f"{where}: block '{name}' creates '{match.group(2)}'; rename one of them")
        blocks.append(SqlBlock(name, match.group(1).upper(), " ".join(doc), body, file, line))

    for number, raw in enumerate(text.splitlines(), start=1):
        match = _NAME.match(raw.strip())
        if match:
            close()
            current, lines = (match.group(1), number), []
        elif current is not None:
            lines.append(raw.rstrip())
        elif raw.strip() and not raw.strip().startswith("--"):
            raise SqlFileError(f"{file}:{number}: SQL outside a '-- name:' block")
    close()
    return blocks


def _statement_block(name: str, kind: str, doc: str, body: str, where: str, file: str, line: int) -> SqlBlock:
    try:
        statements = duckdb.extract_statements(body)
    except duckdb.Error as error:
        raise SqlFileError(f"{where}: block '{name}' does not parse: {str(error).splitlines()[0]}") from error
    if kind == "migration":
        if not _MIGRATION.match(name):
            raise SqlFileError(f"{where}: migration block '{name}' must be named migrate_N (N the format it makes)")
    elif len(statements) != 1:
        raise SqlFileError(f"{where}: block '{name}' holds {len(statements)} statements; give it exactly one")
    if kind == "statement" and "?" in _without_strings(body):
        raise SqlFileError(f"{where}: block '{name}' uses '?'; name its parameters ($name)")
    return SqlBlock(name, kind.upper(), doc, body, file, line)


def _without_strings(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def parameters(block: SqlBlock) -> frozenset[str]:
    """The named parameters ($name) of a statement block."""
    return frozenset(_PARAMETER.findall(_without_strings(block.sql)))


@lru_cache(maxsize=1)
def load_statements() -> dict[str, SqlBlock]:
    """The statement blocks of `sql/queries.sql` and `sql/records.sql` by name."""
    root = resources.files("polysem.sql")
    found: dict[str, SqlBlock] = {}
    for name in STATEMENT_FILES:
        for block in parse_sql(root.joinpath(name).read_text(), name, "statement"):
            if block.name in found:
                first = found[block.name]
                raise SqlFileError(f"{block.file}:{block.line}: '{block.name}' is already defined at "
                                   f"{first.file}:{first.line}")
            found[block.name] = block
    return found


def bind(name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The SQL of statement `name` and its parameters, checked: none missing, none unknown."""
    try:
        block = load_statements()[name]
    except KeyError:
        raise SqlFileError(f"no SQL statement named '{name}' in {', '.join(STATEMENT_FILES)}") from None
    wanted = parameters(block)
    missing, unknown = sorted(wanted - set(params)), sorted(set(params) - wanted)
    if missing or unknown:
        raise SqlFileError(f"{block.file}:{block.line}: '{name}' takes {sorted(wanted) or 'no parameters'}"
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    return block.sql, params


def run_statement(conn: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
    """Execute statement `name` on `conn` with named parameters; fetch from the returned connection."""
    sql, bound = bind(name, params)
    return conn.execute(sql, bound) if bound else conn.execute(sql)


def query_statement(conn: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyRelation:
    """Statement `name` as a relation (for `.to_arrow_table()` without an extra copy)."""
    sql, bound = bind(name, params)
    return conn.sql(sql, params=bound or None)


def run_statement_many(conn: duckdb.DuckDBPyConnection, name: str, rows: list[dict[str, Any]]) -> None:
    """Execute statement `name` once per row of named parameters (nothing for no rows)."""
    if not rows:
        return
    sql, _ = bind(name, rows[0])
    for row in rows[1:]:
        bind(name, row)
    conn.executemany(sql, rows)


@lru_cache(maxsize=1)
def load_migrations() -> tuple[tuple[int, SqlBlock], ...]:
    """(format, block) of every migration, in order; the numbers must follow each other."""
    blocks = parse_sql(resources.files("polysem.sql").joinpath(MIGRATION_FILE).read_text(), MIGRATION_FILE, "migration")
    numbered = [(int(_MIGRATION.match(b.name).group(1)), b) for b in blocks]  # type: ignore[union-attr]
    for (previous, _), (number, block) in itertools.pairwise(numbered):
        if number != previous + 1:
            raise SqlFileError(f"{block.file}:{block.line}: migrate_{number} follows migrate_{previous}; "
                               "number migrations one after the other")
    return tuple(numbered)


@lru_cache(maxsize=1)
def load_blocks() -> tuple[SqlBlock, ...]:
    """All blocks of the packaged `sql/` files, in dependency order."""
    root = resources.files("polysem.sql")
    blocks: list[SqlBlock] = []
    for name in SQL_FILES:
        blocks.extend(parse_sql(root.joinpath(name).read_text(), name))
    seen: dict[str, SqlBlock] = {}
    for block in blocks:
        if block.name in seen:
            first = seen[block.name]
            raise SqlFileError(f"{block.file}:{block.line}: '{block.name}' is already defined at {first.file}:{first.line}")
        seen[block.name] = block
    return tuple(blocks)


def sql_digest() -> str:
    """A short hash of all definitions and migrations, recorded in the store to tell which version wrote it."""
    text = "\n".join(b.sql for b in (*load_blocks(), *(block for _, block in load_migrations())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply_blocks(conn, *, persistent: bool, kinds: tuple[str, ...] = ("TABLE", "VIEW", "MACRO")) -> None:
    """Create every table (persistent only), view and macro of `kinds` on `conn`, in file order.

    Read-only connections get TEMP views and macros, which shadow the persisted
    ones: a reader always runs the SQL of the installed polysem.
    """
    for block in load_blocks():
        if block.kind not in kinds:
            continue
        if block.kind == "TABLE":
            if persistent:
                conn.execute(block.sql)
        else:
            conn.execute(block.sql if persistent else block.temp_sql())


def define(conn, *names: str) -> None:
    """Create the named views and macros (as TEMP objects) on a connection without a store catalog,
    e.g. compaction's: it computes what the store's own definitions compute, with their SQL."""
    blocks = {block.name: block for block in load_blocks()}
    for name in names:
        conn.execute(blocks[name].temp_sql())


def sql_dir() -> Path:
    return Path(str(resources.files("polysem.sql")))
