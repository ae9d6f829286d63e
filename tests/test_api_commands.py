"""Every command of the CLI is a function of the API with the same arguments and refusals, and an empty
answer from the API says why, in the CLI's words."""

import pytest
import typer

import polysem
from polysem.cli import app
from polysem.errors import EmptyAnswer
from polysem.query.screening import why_empty
from polysem.query import Store

# commands whose API is a Store method (info, classes, sql, export) or a function of another name
THROUGH_STORE = {"info", "classes", "sql", "export"}
NAMED = {"plot wordnet": "plot_wordnet"}


def commands(group, prefix=""):
    for name, command in typer.main.get_command(group).commands.items() if prefix == "" else group.commands.items():
        full = f"{prefix}{name}"
        if hasattr(command, "commands"):
            yield from commands(command, f"{full} ")
        else:
            yield full


def test_every_command_is_an_api_function():
    missing = []
    for command in commands(app):
        if command in THROUGH_STORE:
            assert callable(getattr(Store, command if command != "info" else "info", None)), command
            continue
        name = NAMED.get(command, command)
        if not callable(getattr(polysem, name, None)):
            missing.append(command)
    assert missing == []


def test_an_empty_screen_warns_with_the_clis_reason(cli, colour_store):
    with pytest.warns(EmptyAnswer) as caught:
        table = polysem.screen(colour_store, gamma=-1.0)
    assert table.num_rows == 0
    reason = str(caught[0].message)
    assert reason == why_empty(Store(colour_store), tau=0.03, p=0.75, gamma=-1.0)
    shown = cli("screen", "--gamma", -1, "--store", colour_store)
    assert shown.exit_code == 0 and reason.replace("`gamma`", "--gamma") in " ".join(shown.output.split())


def test_the_api_refuses_what_the_cli_refuses(cli, colour_store):
    from polysem.errors import StoreError

    with pytest.raises(StoreError, match="the store has no split 'holdout'"):
        polysem.compact(colour_store, "holdout")
    assert cli("compact", "--split", "holdout", "--store", colour_store).exit_code == 2
    with pytest.raises(Exception, match="unknown run id 'nope'"):
        polysem.run_record(colour_store, "nope")
    assert cli("runs", "nope", "--store", colour_store).exit_code == 2
