"""The hand-written docs document every command, option and SQL object, and nothing that does not exist.

Typer ships its own copy of click (`typer._click` in the installed version), so the command tree from
`typer.main.get_command(app)` is walked by what its objects do (a group has `commands`, an option has
`param_type_name == "option"`), never by `isinstance` against the click package, which would match
nothing and check nothing.

The rules, each one parametrised case per command, option or SQL name:
- every command has help text, and every non-hidden parameter too;
- every command appears in docs/commands.md as `polysem <command>` in the "## The commands" table;
- every non-hidden option appears (`--name`, or its `--no-name` form) in that command's rows of the
  commands table, or in the option table of the command's own page (docs/ingest.md);
  an option every command has (`--store`) is documented once, as such;
- the names in the first column of docs/sql.md's table ("## The names") are exactly the named blocks of
  `sql/` (`load_blocks()`), each documented once.

docs/cli-reference.md lists every option too, but it is generated from the same command tree, so it
proves nothing here; tests/test_docs.py checks that it is up to date.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import typer

from polysem.cli import app
from polysem.query.sqlfiles import load_blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS_PAGE = DOCS / "commands.md"
SQL_PAGE = DOCS / "sql.md"
# options every command has: documented once, in the ingest option table, "(every command; ...)"
GLOBAL_OPTIONS = {"--store"}
# public SQL objects (a block of another kind, e.g. a query the code runs, is not a catalog object)
SQL_OBJECT_KINDS = {"TABLE", "VIEW", "MACRO"}


def commands_page() -> str:
    return COMMANDS_PAGE.read_text()


def command_page(path: tuple[str, ...]) -> str:
    """The page of its own a command has (docs/ingest.md), or ''."""
    page = DOCS / f"{'-'.join(path)}.md"
    return page.read_text() if page.exists() else ""


def section(text: str, heading: str) -> str:
    """The text under a markdown heading (exact line), up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    lines = text.splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i].split(" ")[0]) <= len(level)), len(lines))
    return "\n".join(lines[start + 1 : end])


def is_group(command) -> bool:
    return hasattr(command, "commands")


def walk(group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if is_group(command):
            yield from walk(command, prefix + (name,))
        else:
            yield prefix + (name,), command


ROOT_COMMAND = typer.main.get_command(app)
COMMANDS = dict(walk(ROOT_COMMAND))
OPTIONS = [(path, param) for path, command in COMMANDS.items() for param in command.params
           if param.param_type_name == "option" and not getattr(param, "hidden", False)]


def cmd(path: tuple[str, ...]) -> str:
    return " ".join(path)


def flags(param) -> list[str]:
    return [*param.opts, *getattr(param, "secondary_opts", [])]


def command_rows(text: str, path: tuple[str, ...]) -> list[str]:
    """The rows of the "## The commands" table whose first cell starts with `polysem <command>`."""
    table = section(text, "## The commands")
    pattern = re.compile(rf"^\| `polysem {re.escape(cmd(path))}[ `]")
    return [line for line in table.splitlines() if pattern.match(line)]


def option_table(path: tuple[str, ...]) -> str:
    """The rows of the `| option | meaning |` table of the command's own page, if it has one."""
    page = command_page(path)
    return "\n".join(line for line in page.splitlines() if line.startswith("|")) if "| option |" in page else ""


def test_the_walk_finds_the_tree():
    """Guards the guard: if the walk found nothing (a typer upgrade changing the classes), nothing is checked."""
    assert is_group(ROOT_COMMAND)
    assert len(COMMANDS) >= 16 and ("plot", "wordnet") in COMMANDS
    assert len(OPTIONS) >= 90
    assert any(flag == "--no-compact" for _, param in OPTIONS for flag in flags(param))


def test_the_ingest_option_table_is_found():
    """Guards the guard: the ingest options are checked against docs/ingest.md's table, not against nothing."""
    assert option_table(("ingest",)).count("\n") >= 15


@pytest.mark.parametrize("path", list(COMMANDS), ids=cmd)
def test_command_has_help_and_a_row_in_the_commands_page(path):
    command = COMMANDS[path]
    assert command.help and len(command.help.strip()) > 20, f"`polysem {cmd(path)}` has no help text"
    assert command_rows(commands_page(), path), f"docs/commands.md's table has no row for `polysem {cmd(path)}`"
    for param in command.params:
        if not getattr(param, "hidden", False):
            assert getattr(param, "help", None), f"`polysem {cmd(path)}` {param.name} has no help text"


@pytest.mark.parametrize("path,param", OPTIONS, ids=lambda x: cmd(x) if isinstance(x, tuple) else x.opts[0])
def test_option_is_documented(path, param):
    if set(flags(param)) & GLOBAL_OPTIONS:
        text = commands_page() + "\n" + command_page(("ingest",))
        lines = [line for line in text.splitlines() if f"`{param.opts[0]}" in line and "every command" in line]
        assert lines, f"docs/ do not document {param.opts[0]} as an option of every command"
        return
    docs = "\n".join(command_rows(commands_page(), path)) + "\n" + option_table(path)
    found = [flag for flag in flags(param) if re.search(rf"{re.escape(flag)}(?![\w-])", docs)]
    assert found, (f"docs/ document no {' / '.join(flags(param))} for `polysem {cmd(path)}` "
                   f"(its rows of docs/commands.md's table, or the option table of docs/{'-'.join(path)}.md)")


def sql_table(text: str) -> str:
    return section(text, "## The names")


@lru_cache
def documented_sql_rows() -> tuple[tuple[str, ...], ...]:
    """Per row of docs/sql.md's table, the names in its first cell (`name` or `name(...)`)."""
    rows = []
    for line in sql_table(SQL_PAGE.read_text()).splitlines():
        cells = line.split("|")
        if len(cells) < 3 or set(cells[1].strip()) <= {"-", " "} or cells[1].strip() == "name":
            continue
        rows.append(tuple(re.findall(r"`([A-Za-z_]\w*)(?:`|\()", cells[1])))
    return tuple(rows)


def documented_sql_names() -> list[str]:
    return [name for row in documented_sql_rows() for name in row]


SQL_BLOCKS = sorted(block.name for block in load_blocks() if block.kind in SQL_OBJECT_KINDS)


def test_the_sql_table_is_found():
    assert len(documented_sql_rows()) >= 20 and all(documented_sql_rows())


@pytest.mark.parametrize("name", SQL_BLOCKS)
def test_every_sql_object_is_documented(name):
    assert name in documented_sql_names(), f"docs/sql.md's table does not document {name} (sql/: {name})"


@pytest.mark.parametrize("name", sorted(set(documented_sql_names())))
def test_every_documented_sql_name_exists(name):
    assert name in SQL_BLOCKS, f"docs/sql.md's table documents {name}, which no block of sql/ creates"


@pytest.mark.parametrize("name", sorted(set(documented_sql_names())))
def test_every_documented_sql_name_is_documented_once(name):
    assert documented_sql_names().count(name) == 1, f"docs/sql.md's table documents {name} more than once"
