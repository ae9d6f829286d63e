"""Write the generated half of docs/store.md: the Parquet schemas and every SQL block, from the code.

docs/store.md is prose down to its marker line, written by hand; everything after the marker is
rendered here from what polysem itself uses at run time:
- the Parquet files' schemas from `polysem.query.layout` (every `pyarrow.Schema` it defines);
- every table, view and macro of `sql/*.sql` (`polysem.query.sqlfiles.load_blocks`: name, kind, doc
  comment), with the columns DuckDB reports for it on an empty store built from those schemas;
- the statements polysem runs (`load_statements`) and the migrations (`load_migrations`).

Usage:
    python tools/store_reference.py           rewrite the generated half of docs/store.md
    python tools/store_reference.py --check   exit 1 when it differs from what this would write
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "store.md"
MARKER = "<!-- Generated below by `python tools/store_reference.py`: edit the prose above, never what follows. -->"
# values tried, in turn, for a table macro's required parameters to learn its columns (DESCRIBE binds, reads nothing)
PROBES = ("NULL", "[[0]]", "[0.0]", "0.5")


def prose(text: str) -> str:
    """A doc comment as Markdown: `<` and `>` outside code spans escaped, so n_<split> is not read as HTML."""
    pieces = text.split("`")  # odd pieces are code spans, shown as written
    return "`".join(piece if i % 2 else piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    for i, piece in enumerate(pieces))


def cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return prose(" ".join(text.split())).replace("|", "\\|")


def schemas() -> dict[str, Any]:
    """The Parquet tables of `layout` by name (`samples`, `classes`, ...), as the module defines them."""
    import pyarrow as pa

    from polysem.query import layout

    return {name.lower(): value for name, value in vars(layout).items()
            if isinstance(value, pa.Schema) and name.isupper()}


def single_files(blocks) -> dict[str, str]:
    """Table name -> the one Parquet file a view reads it from (`classes` -> `classes.parquet`)."""
    found = {}
    for block in blocks:
        for path in re.findall(r"read_parquet\('([^'*]+)\.parquet'\)", block.sql):
            found[Path(path).name] = f"{path}.parquet"
    return found


def file_of(table: str, blocks) -> str:
    from polysem.query import layout

    if table in layout.PART_TABLES:
        return f"{table}/<split>/*.parquet"
    return single_files(blocks).get(table, f"{table}.parquet")


def empty_store(folder: Path, blocks):
    """An in-memory catalog over a store with no rows: every object of `sql/` created, so DuckDB can describe it."""
    import duckdb
    import pyarrow.parquet as pq

    from polysem.query import layout, sqlfiles

    layout.write_schema_files(folder)
    for table, schema in schemas().items():
        if table not in layout.PART_TABLES:
            path = folder / file_of(table, blocks)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(schema.empty_table(), path)
    conn = duckdb.connect()
    quoted = str(folder).replace("'", "''")
    conn.execute(f"SET file_search_path = '{quoted}'")
    sqlfiles.apply_blocks(conn, persistent=True)
    return conn


def macro_signature(sql: str) -> tuple[str, bool]:
    """(the parameter list as written, one line; whether it is a table macro) of a CREATE MACRO statement."""
    start = re.search(r"MACRO\s+\w+\s*\(", sql, re.IGNORECASE)
    if start is None:
        return "", False
    depth, i = 1, start.end()
    while depth and i < len(sql):
        depth += {"(": 1, ")": -1}.get(sql[i], 0)
        i += 1
    params = " ".join(sql[start.end(): i - 1].split())
    return params, bool(re.match(r"\s*AS\s+TABLE\b", sql[i:], re.IGNORECASE))


def split_params(params: str) -> list[str]:
    """Top-level comma split of a parameter list (defaults may hold lists)."""
    out, depth, current = [], 0, ""
    for ch in params:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*out, current.strip()] if p]


def describe(conn, sql: str) -> list[tuple[str, str]] | None:
    import duckdb

    try:
        return [(row[0], row[1]) for row in conn.execute(f"DESCRIBE {sql}").fetchall()]
    except duckdb.Error:
        return None


def macro_columns(conn, name: str, params: str) -> list[str] | None:
    """The column names of a table macro, bound with trial values for its required parameters; None if none binds."""
    required = [p for p in split_params(params) if ":=" not in p]
    for values in itertools.product(PROBES, repeat=len(required)):
        columns = describe(conn, f"SELECT * FROM {name}({', '.join(values)})")
        if columns is not None:
            return [column for column, _ in columns]
    return None


def columns_line(columns) -> str:
    return ", ".join(f"`{name}` {kind}" if kind else f"`{name}`" for name, kind in columns)


def render_parquet(blocks) -> list[str]:
    from polysem.query import layout

    docs = {block.name: block.doc for block in blocks}
    optional = getattr(layout, "OPTIONAL_COLUMNS", {})
    lines = ["## The Parquet files", "",
             "Their schemas, from `query/layout.py`; each is read by the view of the same name.", ""]
    for table, schema in schemas().items():
        lines += [f"### `{file_of(table, blocks)}`", ""]
        if table in docs:
            lines += [prose(docs[table]), ""]
        lines += ["| column | Arrow type | |", "| --- | --- | --- |"]
        for field in schema:
            note = "optional: older files lack it" if field.name in optional.get(table, ()) else ""
            lines.append(f"| `{field.name}` | `{field.type}` | {note} |")
        lines.append("")
    return lines


KIND_WORDS = {"TABLE": "table", "VIEW": "view"}


def render_objects(conn, blocks) -> list[str]:
    lines = ["## The catalog's tables, views and macros", "",
             ("Every object `sql/` creates, file by file in the order they are applied, with its doc comment. "
             "Columns and types are what DuckDB reports on an empty store; a table macro's column types depend "
             "on its arguments, so only their names are given."), ""]
    for file, group in itertools.groupby(blocks, key=lambda block: block.file):
        lines += [f"### `sql/{file}`", ""]
        for block in group:
            if block.kind == "MACRO":
                params, is_table = macro_signature(block.sql)
                heading = f"#### `{block.name}({params})`"
                kind = "table macro" if is_table else "scalar macro"
                columns = macro_columns(conn, block.name, params) if is_table else None
                column_text = ", ".join(f"`{name}`" for name in columns) if columns else ""
            else:
                heading = f"#### `{block.name}`"
                kind = KIND_WORDS.get(block.kind, block.kind.lower())
                found = describe(conn, f'"{block.name}"')
                column_text = columns_line(found) if found else ""
            lines += [heading, "", f"*{kind}.* {prose(block.doc)}", ""]
            if column_text:
                lines += [f"Columns: {column_text}.", ""]
    return lines


def render_statements() -> list[str]:
    from polysem.query import sqlfiles

    statements = sqlfiles.load_statements()
    blocks = list(statements.values()) if isinstance(statements, dict) else list(statements)
    marks = getattr(sqlfiles, "MARKS", {})  # what a block returns, by the mark after its name
    lines = ["## The statements polysem runs", "",
             ("Every read and write of the code is a named block of `sql/queries.sql` or `sql/records.sql` with "
             "named `$parameters`, called by its name."), ""]
    header = ["block", "file", "parameters", *(["returns"] if marks else []), "what it does"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for block in blocks:
        params = ", ".join(f"`{p}`" for p in sorted(sqlfiles.parameters(block)))
        mark = getattr(block, "mark", "")
        returns = [cell(f"`{mark}` " * bool(mark) + marks.get(mark, ""))] if marks else []
        lines.append("| " + " | ".join([f"`{block.name}`", f"`sql/{block.file}`", params, *returns, cell(block.doc)])
                     + " |")
    lines += ["", "## Migrations", "",
              ("`migrate_N` brings a catalog of format N-1 to format N (`sql/migrations.sql`), in order, in one "
              "transaction."), "", "| block | what it does |", "| --- | --- |"]
    for _, block in sqlfiles.load_migrations():
        lines.append(f"| `{block.name}` | {cell(block.doc)} |")
    return lines


def render_generated() -> str:
    from polysem.query import sqlfiles

    blocks = list(sqlfiles.load_blocks())
    with tempfile.TemporaryDirectory() as folder:
        conn = empty_store(Path(folder), blocks)
        try:
            lines = render_parquet(blocks) + render_objects(conn, blocks) + render_statements()
        finally:
            conn.close()
    return "\n".join(lines).rstrip("\n") + "\n"


def render(current: str) -> str:
    """`current` (docs/store.md as it is) with everything after the marker generated anew."""
    if MARKER not in current:
        raise SystemExit(f"{TARGET.relative_to(ROOT)} has no marker line; add it where the generated part starts:\n{MARKER}")
    return current[: current.index(MARKER) + len(MARKER)] + "\n\n" + render_generated()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is out of date; write nothing")
    args = parser.parse_args(argv)
    current = TARGET.read_text()
    text = render(current)
    if args.check:
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python tools/store_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
