"""Every failure is one `Error:` line and exit 2; every option an error message suggests exists;
recording commands either finish or change nothing."""

import ast
import re

import click
import pytest
import typer

from polysem.cli import app
from polysem.query import Store
from tests.conftest import ROOT
from tests.test_cli_ingest import assert_refused
from tests.test_validation import snapshot


def all_options():
    def walk(group):
        for command in group.commands.values():
            if isinstance(command, click.Group):
                yield from walk(command)
            else:
                for param in command.params:
                    yield from getattr(param, "opts", [])
    # torchrun's own option, named where it is the fix
    return set(walk(typer.main.get_command(app))) | {"--help", "--version", "--nproc-per-node"}


def message_strings():
    """String literals of the library and CLI that name an option (`--something`)."""
    for folder in ("polysem", "ingest", "query"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", node.value):
                        yield path.relative_to(ROOT), option


def test_every_option_named_in_a_message_exists():
    options = all_options()
    named = list(message_strings())
    assert len(named) > 40  # the scan sees the messages
    unknown = sorted({f"{path}: {option}" for path, option in named if option not in options})
    assert unknown == []


def test_library_bugs_and_duckdb_errors_are_one_line(cli, colour_store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered\nmore detail")

    monkeypatch.setattr("polysem.query.screening.polysemantic_pairs", broken)
    result = cli("screen", "--store", colour_store)
    assert_refused(result, "RuntimeError: CUDA error: device-side assert triggered", "POLYSEM_DEBUG=1")
    monkeypatch.setenv("POLYSEM_DEBUG", "1")
    assert isinstance(cli("screen", "--store", colour_store).exception, RuntimeError)  # the traceback, unchanged


def test_evaluate_that_fails_at_the_end_changes_nothing(cli, colour_store, tmp_path, monkeypatch):
    from polysem.disentangling import disentangle

    run = disentangle(colour_store, 0, [1], [2], progress=False)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "mine.txt").write_text("a file of the user")
    before = snapshot(colour_store), snapshot(plots)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    original = Store.connect

    def no_writes(self, write=False):
        if write:  # recording is the last step
            raise OSError(28, "No space left on device")
        return original(self, write)

    monkeypatch.setattr(Store, "connect", no_writes)
    result = cli("evaluate", run.run_id, "--store", colour_store, "--plots", plots)
    assert_refused(result, "No space left on device")
    assert (snapshot(colour_store), snapshot(plots)) == before
    monkeypatch.undo()
    monkeypatch.setattr("polysem.plots.top_images", fail)  # the last figures fail
    assert_refused(cli("evaluate", run.run_id, "--store", colour_store, "--plots", plots), "No space left on device")
    assert (snapshot(colour_store), snapshot(plots)) == before
    monkeypatch.undo()
    done = cli("evaluate", run.run_id, "--store", colour_store, "--plots", plots)
    assert done.exit_code == 0, done.output
    assert len(list(plots.glob("run-*.png"))) >= 2 and (plots / "mine.txt").exists()


@pytest.mark.parametrize("args, fragment", [
    (["ingest", "data", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["visualize", "--method", "xyz"], "'xyz' is not one of 'maco', 'fourier'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["screen", "--nonsense"], "No such option: --nonsense"),
])
def test_usage_errors_are_one_line_from_the_command_line(args, fragment, tmp_path, capsys, monkeypatch):
    from polysem.cli import main

    monkeypatch.setattr("sys.argv", ["polysem", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]
    assert "--help`" in lines[0]
