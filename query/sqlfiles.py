"""Loads the named SQL blocks of `sql/*.sql`: every statement polysem runs is one of them.

A block is:

    -- name: relevant_pairs
    -- (channel, class) pairs whose relevance fraction reaches p.
    CREATE OR REPLACE MACRO relevant_pairs(...) AS TABLE ...;

Three kinds of file:
- definitions (SQL_FILES): each block creates exactly the object it is named after; applied to
  every catalog (`apply_blocks`);
- statements (STATEMENT_FILES, aiosql's way): each block is one statement with named parameters
  (`$name`), and becomes a method of that name (`store.reads.class_count()`, `tx.put_meta(...)`);
- migrations (MIGRATION_FILE): `migrate_N` brings a catalog of format N-1 to N.

A statement block's name says what it returns, marked as aiosql marks it (MARKS):

    -- name: class_list        rows: a pyarrow.Table
    -- name: run_by_id^        one row: a dict, or None when there is none
    -- name: class_count$      one value: the first column of the first row, or None when there is no row
    -- name: put_meta!         a write: returns nothing
    -- name: insert_run*!      a write run once per row: the method takes a list of parameter dicts

The methods (`Statements`, `Transaction`, `store.reads`) are made from the loaded blocks (`with_methods`):
each is named after its block, takes the block's parameters as keywords, returns what its mark says, and
has the block's comment as its docstring, so completion and `help()` show them. `run(name, **params)` is
the by-name form they call.

The loader checks every block when it reads the files (a definition creates its name; a statement is one
statement, marked with a known mark, a read mark on a SELECT and a write mark on anything else; a
migration's number follows the last), so a malformed block fails with its file and line before anything
touches a store; a call with a missing or unknown parameter fails naming the block.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import duckdb

from polysem.errors import PolysemError

if TYPE_CHECKING:
    import pyarrow as pa
    from typing_extensions import Self  # typing.Self is Python 3.11's; only mypy reads it

# Order matters: later files use objects of earlier ones.
SQL_FILES = ("tables.sql", "store_views.sql", "screening_macros.sql", "disentangle_macros.sql", "evaluation_macros.sql")
READS_FILE = "queries.sql"  # reads only: they run on the store's read-only connection
WRITES_FILE = "records.sql"  # what a transaction runs: the writes and the reads they need
STATEMENT_FILES = (READS_FILE, WRITES_FILE)
MIGRATION_FILE = "migrations.sql"
_PARAMETER = re.compile(r"\$([A-Za-z_]\w*)")
_MIGRATION = re.compile(r"^migrate_(\d+)$")

# What a statement block returns, marked after its name (aiosql's marks); its method returns that.
MARKS = {
    "": "rows (a pyarrow.Table)",
    "^": "one row (a dict), or None when there is none",
    "$": "one value (the first column of the first row), or None when there is no row",
    "!": "nothing (a write)",
    "*!": "nothing (a write run once per row of a list of parameter dicts)",
}
READ_MARKS = ("", "^", "$")
_RETURNS = {"": "pyarrow.Table", "^": "dict[str, Any] | None", "$": "Any", "!": "None", "*!": "None"}

_NAME_LINE = re.compile(r"^--\s*name:")
_NAME = re.compile(r"^--\s*name:\s*(\w+)(\S*)\s*$")
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
    mark: str = ""  # a statement's: what it returns (MARKS)

    def temp_sql(self) -> str:
        """The same statement creating a TEMP object (for read-only connections)."""
        return re.sub(r"^\s*CREATE\s+OR\s+REPLACE\s+", "CREATE OR REPLACE TEMP ", self.sql, count=1, flags=re.IGNORECASE)


class SqlFileError(PolysemError):
    pass


def parse_sql(text: str, file: str, kind: str = "definition") -> list[SqlBlock]:
    """Split one file's text into its named blocks, validating each as a `kind` block
    (definition, statement or migration)."""
    blocks: list[SqlBlock] = []
    current: tuple[str, str, int] | None = None
    lines: list[str] = []

    def close() -> None:
        if current is None:
            return
        name, mark, line = current
        doc = [ln[2:].strip() for ln in lines if ln.startswith("--")]
        body = "\n".join(ln for ln in lines if not ln.startswith("--")).strip()
        where = f"{file}:{line}"
        if not body:
            raise SqlFileError(f"{where}: block '{name}' is empty; give it one CREATE statement")
        if not doc:
            raise SqlFileError(f"{where}: block '{name}' has no doc comment; say what it returns")
        if kind != "definition":
            blocks.append(_statement_block(name, mark, kind, " ".join(doc), body, where, file, line))
            return
        match = _CREATE.match(body)
        if not match:
            raise SqlFileError(f"{where}: block '{name}' must be one CREATE TABLE/VIEW/MACRO statement")
        if match.group(2).lower() != name.lower():
            raise SqlFileError(f"{where}: block '{name}' creates '{match.group(2)}'; rename one of them")
        blocks.append(SqlBlock(name, match.group(1).upper(), " ".join(doc), body, file, line))

    for number, raw in enumerate(text.splitlines(), start=1):
        match = _NAME.match(raw.strip())
        if _NAME_LINE.match(raw.strip()):
            close()
            current, lines = (*_name_and_mark(match, kind, f"{file}:{number}", raw.strip()), number), []
        elif current is not None:
            lines.append(raw.rstrip())
        elif raw.strip() and not raw.strip().startswith("--"):
            raise SqlFileError(f"{file}:{number}: SQL outside a '-- name:' block")
    close()
    return blocks


def _name_and_mark(match: re.Match[str] | None, kind: str, where: str, text: str) -> tuple[str, str]:
    """The name and mark of a `-- name:` line: a statement's mark is one of MARKS, other blocks take none."""
    if match is None:
        raise SqlFileError(f"{where}: '{text}' is no block name; write '-- name: NAME' and its mark, if any, "
                           "right after it")
    name, mark = match.groups()
    if kind == "statement" and mark not in MARKS:
        raise SqlFileError(f"{where}: block '{name}' has the unknown mark '{mark}'; mark it " + ", ".join(
            f"'{m}' for {what}" if m else f"nothing for {what}" for m, what in MARKS.items()))
    if kind != "statement" and mark:
        raise SqlFileError(f"{where}: block '{name}' is marked '{mark}'; only statements (queries.sql, "
                           "records.sql) say what they return")
    return name, mark


def _statement_block(name: str, mark: str, kind: str, doc: str, body: str, where: str, file: str,
                     line: int) -> SqlBlock:
    try:
        statements = duckdb.extract_statements(body)
    except duckdb.Error as error:
        raise SqlFileError(f"{where}: block '{name}' does not parse: {str(error).splitlines()[0]}") from error
    if kind == "migration":
        if not _MIGRATION.match(name):
            raise SqlFileError(f"{where}: migration block '{name}' must be named migrate_N (N the format it makes)")
    elif len(statements) != 1:
        raise SqlFileError(f"{where}: block '{name}' holds {len(statements)} statements; give it exactly one")
    if kind == "statement":
        if "?" in _without_strings(body):
            raise SqlFileError(f"{where}: block '{name}' uses '?'; name its parameters ($name)")
        is_select = statements[0].type == duckdb.StatementType.SELECT
        if is_select and mark not in READ_MARKS:
            raise SqlFileError(f"{where}: block '{name}' is a SELECT marked '{mark}' (a write); mark what it "
                               "returns: nothing for rows, '^' for one row, '$' for one value")
        # MULTI: DuckDB's type for a SELECT using PIVOT, which it runs in steps
        if not is_select and statements[0].type != duckdb.StatementType.MULTI and mark in READ_MARKS:
            raise SqlFileError(f"{where}: block '{name}' is a write ({statements[0].type.name}); mark it '!' "
                               "(or '*!' to run it once per row)")
    return SqlBlock(name, kind.upper(), doc, body, file, line, mark)


def _without_strings(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def parameters(block: SqlBlock) -> frozenset[str]:
    """The named parameters ($name) of a statement block."""
    return frozenset(_PARAMETER.findall(_without_strings(block.sql)))


def _ordered_parameters(block: SqlBlock) -> list[str]:
    return list(dict.fromkeys(_PARAMETER.findall(_without_strings(block.sql))))


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
            if block.file == READS_FILE and block.mark not in READ_MARKS:
                raise SqlFileError(f"{block.file}:{block.line}: '{block.name}' is a write; {READS_FILE} holds reads "
                                   f"(they run on the store's read-only connection): move it to {WRITES_FILE}")
            found[block.name] = block
    return found


_CALLED_ON = {READS_FILE: "call it as store.reads.{name}(...) or Statements(conn).{name}(...)",
              WRITES_FILE: "call it on the transaction of Store.transaction(): tx.{name}(...)"}


def statement(name: str, files: tuple[str, ...] = STATEMENT_FILES) -> SqlBlock:
    """The statement block `name` of one of `files`."""
    block = load_statements().get(name)
    if block is None:
        raise SqlFileError(f"no SQL statement named '{name}' in {', '.join(files)}")
    if block.file not in files:
        raise SqlFileError(f"{block.file}:{block.line}: '{name}' is a block of {block.file}; "
                           + _CALLED_ON[block.file].format(name=name))
    return block


def bind(name: str, params: dict[str, Any], files: tuple[str, ...] = STATEMENT_FILES) -> tuple[SqlBlock, dict[str, Any]]:
    """Statement block `name` (of one of `files`) and its parameters, checked: none missing, none unknown."""
    block = statement(name, files)
    wanted = parameters(block)
    missing, unknown = sorted(wanted - set(params)), sorted(set(params) - wanted)
    if missing or unknown:
        raise SqlFileError(f"{block.file}:{block.line}: '{name}' takes {sorted(wanted) or 'no parameters'}"
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    return block, params


def bind_rows(name: str, rows: list[dict[str, Any]], files: tuple[str, ...] = STATEMENT_FILES) -> SqlBlock:
    """Statement block `name` (of one of `files`, marked '*!') with every row of parameters checked."""
    block = statement(name, files)
    if block.mark != "*!":
        raise SqlFileError(f"{block.file}:{block.line}: '{name}' is marked '{block.mark}', not '*!' (a write per "
                           "row); call it once, with its parameters by name")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SqlFileError(f"{block.file}:{block.line}: '{name}' takes a list of rows, each a dict of its "
                           f"parameters, got {type(rows).__name__}")
    for row in rows:
        bind(name, row, files)
    return block


def result(block: SqlBlock, table: pa.Table) -> Any:
    """What `block` returns by its mark (MARKS), from the Arrow table of its rows."""
    if block.mark == "$":
        return table.column(0)[0].as_py() if table.num_rows else None
    if block.mark == "^":
        return table.slice(0, 1).to_pylist()[0] if table.num_rows else None
    return table


def run_statement(conn: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
    """Execute statement `name` on `conn` with named parameters and return the cursor, to fetch from as it
    suits (ingest's resume fetches numpy); `Statements(conn).NAME(...)` returns what the block's mark says."""
    block, bound = bind(name, params)
    return conn.execute(block.sql, bound) if bound else conn.execute(block.sql)


_S = TypeVar("_S", bound="NamedStatements")


class NamedStatements:
    """Statement blocks (those of FILES) as methods: `obj.class_count()`, or by name `obj.run("class_count")`.

    An instance is always of the subclass `with_methods` makes from the loaded blocks, so the methods are real
    attributes: completion (`dir`, IPython, Jupyter) lists them, `help()` shows each block's comment and its
    keyword parameters. A subclass says where the blocks run (`run`, `run_many`).
    """

    FILES: ClassVar[tuple[str, ...]] = STATEMENT_FILES
    _blocks: ClassVar[dict[str, SqlBlock]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        return object.__new__(cls if "_blocks" in vars(cls) else with_methods(cls))

    def run(self, name: str, **params: Any) -> Any:
        """Statement `name` with its parameters by name; returns what its mark says (MARKS)."""
        raise NotImplementedError

    def run_many(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Statement `name` (marked '*!') once per row of parameters; nothing for no rows."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: the {len(self._blocks)} blocks of {', '.join(self.FILES)} as methods>"

    if TYPE_CHECKING:  # the methods are made when the blocks load: to mypy each is a callable
        def __getattr__(self, name: str) -> Callable[..., Any]: ...


class Statements(NamedStatements):
    """Every statement block (queries.sql and records.sql) as a method on one DuckDB connection: a writer's
    catalog, a reader's copy of it, or a plain connection over Parquet files (compaction, `check`), e.g.
    `Statements(conn).meta_value(key="sql_digest")`."""

    conn: duckdb.DuckDBPyConnection

    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self.conn = conn

    def run(self, name: str, **params: Any) -> Any:
        block, bound = bind(name, params, self.FILES)
        if block.mark == "*!":
            raise SqlFileError(f"{block.file}:{block.line}: '{name}' is marked '*!' (a write per row); pass it a "
                               f"list of rows: {name}(rows)")
        if block.mark == "!":
            self.conn.execute(block.sql, bound or None)
            return None
        return result(block, self.conn.sql(block.sql, params=bound or None).to_arrow_table())

    def run_many(self, name: str, rows: list[dict[str, Any]]) -> None:
        block = bind_rows(name, rows, self.FILES)
        if rows:
            self.conn.executemany(block.sql, rows)


def with_methods(cls: type[_S]) -> type[_S]:
    """`cls` with one method per statement block of its FILES, each named after its block, taking the block's
    parameters as keywords (a '*!' block: a list of rows) and documented by its comment; made once per class."""
    made = _MADE.get(cls)
    if made is None:
        made = _MADE.setdefault(cls, _with_methods(cls))
    return cast("type[_S]", made)


_MADE: dict[type, type] = {}


def _with_methods(cls: type[NamedStatements]) -> type:
    blocks = {name: block for name, block in load_statements().items() if block.file in cls.FILES}
    namespace: dict[str, Any] = {"_blocks": blocks, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                 "__doc__": cls.__doc__}
    for block in blocks.values():
        taken = hasattr(cls, block.name) or any(block.name in vars(k).get("__annotations__", {}) for k in cls.__mro__)
        if taken:
            raise SqlFileError(f"{block.file}:{block.line}: block '{block.name}' would hide "
                               f"{cls.__name__}.{block.name}; rename the block")
        namespace[block.name] = _method(block, cls)
    return type(cls.__name__, (cls,), namespace)


def _method(block: SqlBlock, owner: type) -> Callable[..., Any]:
    name, wanted = block.name, _ordered_parameters(block)
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if block.mark == "*!":
        def method(self: NamedStatements, rows: list[dict[str, Any]]) -> None:
            self.run_many(name, rows)

        signature = [this, inspect.Parameter("rows", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                             annotation="list[dict[str, Any]]")]
    else:
        def method(self: NamedStatements, *args: Any, **params: Any) -> Any:  # type: ignore[misc]
            if args:
                raise SqlFileError(f"{block.file}:{block.line}: '{name}' takes its parameters by name: "
                                   f"{name}({', '.join(f'{p}=...' for p in wanted)})")
            return self.run(name, **params)

        signature = [this, *(inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in wanted)]
    method.__name__ = name
    method.__qualname__ = f"{owner.__qualname__}.{name}"
    method.__module__ = owner.__module__
    method.__doc__ = f"{block.doc}\n\nReturns {MARKS[block.mark]}. SQL: sql/{block.file}:{block.line}."
    method.__signature__ = inspect.Signature(signature, return_annotation=_RETURNS[block.mark])  # type: ignore[attr-defined]
    return method


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

