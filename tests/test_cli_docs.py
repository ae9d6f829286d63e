"""Every command has help text and a line in README.md; every SQL name is documented there too."""

import re

import click
import pytest
import typer
from polysem.query.sqlfiles import load_blocks

from polysem.cli import app
from tests.conftest import ROOT


def commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_command_has_help_and_is_in_readme():
    readme = (ROOT / "README.md").read_text()
    found = list(commands(typer.main.get_command(app)))
    assert len(found) >= 11
    for path, command in found:
        assert command.help and len(command.help.strip()) > 20, path
        assert f"polysem {' '.join(path)}" in readme, f"README does not document `polysem {' '.join(path)}`"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{path} {param.name} has no help"


def documented_sql_names() -> set[str]:
    """Names the README's SQL table documents: a backticked name, alone or called (`name` or `name(...)`)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## SQL interface"):readme.index("What user SQL")]
    return set(re.findall(r"`([A-Za-z_]\w*)(?:`|\()", table))


@pytest.mark.parametrize("name", [block.name for block in load_blocks()])
def test_every_public_sql_name_is_in_readme(name):
    assert name in documented_sql_names(), f"README's SQL table does not document {name}"
