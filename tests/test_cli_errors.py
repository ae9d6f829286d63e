"""Every failure is one `Error:` line and exit 2; every option an error message suggests exists;
recording commands either finish or change nothing."""

import ast
import json
import re

import click
import pytest
import typer
from polysem.query import Store

from polysem.cli import app
from tests.helpers import ROOT, assert_refused, snapshot


def all_options():
    def walk(group):
        for command in group.commands.values():
            if isinstance(command, click.Group):
                yield from walk(command)
            else:
                for param in command.params:
                    yield from getattr(param, "opts", [])
    # torchrun's own options, named where they are the fix
    return set(walk(typer.main.get_command(app))) | {"--help", "--version", "--nproc-per-node", "--nnodes",
                                                      "--master-port"}


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
    from polysem.method.runs import disentangle

    run = disentangle(colour_store, 0, concept1=[1], concept2=[2], progress=False)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "mine.txt").write_text("a file of the user")
    before = snapshot(colour_store), snapshot(plots)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    original = Store.connect

    def no_writes(self, write=False, create=False):
        if write:  # recording is the last step
            raise OSError(28, "No space left on device")
        return original(self, write, create)

    monkeypatch.setattr(Store, "connect", no_writes)
    result = cli("evaluate", run.run_id, "--store", colour_store, "--plots", plots)
    assert_refused(result, "No space left on device")
    assert (snapshot(colour_store), snapshot(plots)) == before
    monkeypatch.undo()
    monkeypatch.setattr("polysem.figures.plots.top_images", fail)  # the last figures fail: named for the plot folder
    assert_refused(cli("evaluate", run.run_id, "--store", colour_store, "--plots", plots),
                   f"no space left on the disk holding {plots} (", "nothing was written there")
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


def test_values_out_of_range_are_refused_and_answers_stay_sound(cli, colour_store, tmp_path):
    """Out-of-range sizes and seeds, options of another mode, a file for a folder, a damaged model: each one line,
    exit 2, the store unchanged; an empty screening, NaN and lists in JSON and CSV are sound answers."""
    from polysem.method.runs import disentangle

    run = disentangle(colour_store, 0, concept1=[1], concept2=[2], progress=False)
    before = snapshot(colour_store)
    assert_refused(cli("visualize", run.run_id, "--size", 100000, "--store", colour_store), "--size must be from 8 to 1024")
    assert_refused(cli("visualize", run.run_id, "--seed", 10**20, "--store", colour_store), "--seed must be from 0")
    assert_refused(cli("disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--gamma", 0.3,
                       "--store", colour_store), "--limit and --gamma choose channels for --from-screen")
    assert_refused(cli("screen", "--limit", -1, "--store", colour_store), "--limit must be from 1 to 2**63 - 1")
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert_refused(cli("report", "--out", a_file, "--store", colour_store), "is a file; give a folder")
    assert snapshot(colour_store) == before
    # no polysemantic channel at these settings is an empty answer, not an error
    empty = cli("screen", "--concepts", "--gamma", -1, "--store", colour_store, "--format", "json")
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    # a run's parameters are an object in JSON, and NaN is null
    full = json.loads(cli("runs", run.run_id, "--store", colour_store, "--format", "json").stdout)
    assert isinstance(full[0]["parameters"], dict)
    nan = cli("sql", "SELECT 'nan'::DOUBLE AS x", "--store", colour_store, "--format", "json")
    assert json.loads(nan.stdout) == [{"x": None}]
    cells = cli("sql", "SELECT [true, false] AS b, [[1, 2], [3]] AS l, true AS t", "--store", colour_store,
                "--format", "csv")
    assert cells.stdout == 'b,l,t\n"[true, false]","[[1, 2], [3]]",true\n'  # JSON lists, as DuckDB writes
    # a damaged model: `check` names it, and commands say which file and what to do
    artifact = Store(colour_store).path / run.artifact
    artifact.write_bytes(artifact.read_bytes()[:1000])
    assert_refused(cli("verify", run.run_id, "--store", colour_store), f"{artifact} cannot be read",
                   "disentangle the channel again")
    checked = cli("check", "--store", colour_store)
    assert checked.exit_code == 2 and f"its model {artifact} is damaged" in checked.output


def test_report_into_an_existing_folder_replaces_only_its_own_files(cli, colour_store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    first = cli("report", "--out", out, "--store", colour_store)
    assert first.exit_code == 0, first.output
    page = (out / "index.html").read_bytes()
    again = cli("report", "--out", out, "--store", colour_store)  # a rerun, e.g. of `make demo`
    assert again.exit_code == 0, again.output
    assert (out / "notes.txt").read_text() == "the user's" and (out / "index.html").read_bytes() == page

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("polysem.query.screening.polysemantic_pairs", fail)  # fails mid-way
    (out / "index.html").write_text("the last report")
    assert_refused(cli("report", "--out", out, "--store", colour_store), "No space left on device")
    assert (out / "index.html").read_text() == "the last report"
    assert sorted(p.name for p in out.iterdir()) == ["img", "index.html", "notes.txt"]  # no staging left
