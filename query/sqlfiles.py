"""Loads the named SQL blocks of `sql/*.sql` and applies them to a DuckDB connection.

A block is:

    -- name: relevant_pairs
    -- (channel, class) pairs whose relevance fraction reaches p.
    CREATE OR REPLACE MACRO relevant_pairs(...) AS TABLE ...;

Each block creates exactly the object it is named after. The loader checks this
when it reads the files, so a malformed block fails with its file and line
before anything touches a store.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from polysem.errors import PolysemError

# Order matters: later files use objects of earlier ones.
SQL_FILES = ("schema.sql", "store.sql", "screening.sql", "disentangle.sql", "evaluation.sql")

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")
_CREATE = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(TABLE|VIEW|MACRO)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SqlBlock:
    name: str
    kind: str  # TABLE, VIEW or MACRO
    doc: str
    sql: str
    file: str
    line: int

    def temp_sql(self) -> str:
        """The same statement creating a TEMP object (for read-only connections)."""
        return re.sub(r"^\s*CREATE\s+OR\s+REPLACE\s+", "CREATE OR REPLACE TEMP ", self.sql, count=1, flags=re.I)


class SqlFileError(PolysemError):
    pass


def parse_sql(text: str, file: str) -> list[SqlBlock]:
    """Split one file's text into its named blocks, validating each."""
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
    """A short hash of all SQL, recorded in the store to tell which version wrote it."""
    text = "\n".join(b.sql for b in load_blocks())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply_blocks(conn, *, persistent: bool) -> None:
    """Create every table (persistent only), view and macro on `conn`.

    Read-only connections get TEMP views and macros, which shadow the persisted
    ones: a reader always runs the SQL of the installed polysem.
    """
    for block in load_blocks():
        if block.kind == "TABLE":
            if persistent:
                conn.execute(block.sql)
        else:
            conn.execute(block.sql if persistent else block.temp_sql())


def sql_dir() -> Path:
    return Path(str(resources.files("polysem.sql")))
