"""The `polysem` command line: parses options, calls the library, prints results.

Every command is thin: the work lives in `ingest`, `query` and `polysem.*`
functions that a notebook can call the same way.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, cast

import typer

from polysem import constants
from polysem.errors import ObjectsNeeded, PolysemError
from polysem.util.text import escape_controls

app = typer.Typer(
    name="polysem",
    help="Find and disentangle polysemantic CNN channels from attributions kept in a DuckDB store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plot_app = typer.Typer(help="Figures from the store.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from polysem import __version__

        typer.echo(f"polysem {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    """Find and disentangle polysemantic CNN channels from attributions kept in a DuckDB store."""
app.add_typer(plot_app, name="plot")

# the options many commands share, each defined once
StoreOption = Annotated[
    str,  # the text as given: an empty one is refused (`Store`), which a Path would read as the current folder
    typer.Option("--store", envvar="POLYSEM_STORE", help="Store directory (or set POLYSEM_STORE).", show_default=True),
]
DataOption = Annotated[Path | None, typer.Option("--data", help="DATA_DIR now holding the images, if they moved since ingest.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
FormatOption = Annotated[str, typer.Option("--format", help="Output format: table, csv or json.")]
TableJsonOption = Annotated[str, typer.Option("--format", help="Output format: table or json.")]
DEFAULT_STORE = constants.DEFAULT_STORE
TrustOption = Annotated[
    Path | None,
    typer.Option("--trust-code", help="Import the model and transform code the store names from this folder "
                                      "(outside the store; read the code first) instead of the folder its first "
                                      "ingest recorded. [default: POLYSEM_TRUST_CODE, else the recorded folder]"),
]


def command(group: typer.Typer = app, name: str | None = None):
    """Register a command whose library errors become one `Error: ...` line and exit code 2."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt as interrupt:  # Ctrl-C: exit 130, as a shell reports SIGINT
                # a library interrupt says what it means (a query: the store is unchanged)
                what = str(interrupt) or ("the command stopped before it finished; what it records is recorded "
                                          "whole or not at all, so run it again")
                typer.echo(f"Interrupted: {escape_controls(what)}.", err=True)
                raise typer.Exit(130) from None
            except (typer.Exit, typer.Abort):
                raise
            except Exception as error:
                if os.environ.get(DEBUG_ENV) and not isinstance(error, PolysemError):
                    raise
                echo_error(objects_line(error, name or fn.__name__) or error_line(error))
                raise typer.Exit(2) from None

        return group.command(name=name)(wrapper)

    return decorate


DEBUG_ENV = "POLYSEM_DEBUG"

# Library messages name a parameter in backticks, `batch_size`, or with a value, `device`=cpu, so that a
# notebook reads the names it passes; the command line shows the flag that sets it instead. This is the
# one place that knows which flag sets which parameter.
FLAGS = {
    "class_file": "--set",
    "again": "--again",
    "batch_size": "--batch-size",
    "by_concept": "--concepts",
    "channel": "--channel",
    "channels": "--channels",
    "classes": "--classes",
    "concept1": "--concept1",
    "concept2": "--concept2",
    "concepts": "--concept",
    "compact": "--compact",
    "correct_only": "--correct-only",
    "data_dir": "--data",
    "decode": "--decode",
    "device": "--device",
    "figure_format": "--figure-format",
    "force": "--force",
    "from_screen": "--from-screen",
    "gamma": "--gamma",
    "layer": "--layer",
    "limit": "--limit",
    "max_pixels": "--max-pixels",
    "method": "--method",
    "model": "--model",
    "name_or_query": "NAME_OR_QUERY",
    "fmt": "--format",
    "num_workers": "--num-workers",
    "objective": "--objective",
    "out": "--out",
    "p": "--p",
    "plots_dir": "--plots",
    "positions": "--positions",
    "query": "QUERY",
    "rank_timeout": "--rank-timeout",
    "target": "--target",
    "repair": "--repair",
    "rho": "--rho",
    "rows_per_part": "--rows-per-part",
    "run_id": "RUN_ID",
    "seed": "--seed",
    "selection": "--selection",
    "seeds": "--seeds",
    "size": "--size",
    "split": "--split",
    "steps": "--steps",
    "store": "--store",
    "sweep": "--sweep",
    "take": "--limit",  # disentangle --from-screen --limit N takes the first N candidates that split
    "tau": "--tau",
    "threads": "--threads",
    "transform": "--transform",
    "trust_code": "--trust-code",
    "weights": "--weights",
    "wordnet_dir": "--wordnet-dir",
}
_PARAMETER = re.compile(r"`(\w+)`(?:=([\w.:/-]+))?")


def as_flags(message: str) -> str:
    """A library message as the command line says it: `tau` -> --tau, `device`=cpu -> --device cpu."""

    def flag(match: re.Match) -> str:
        name, value = match.groups()
        if name not in FLAGS:
            return match.group(0)
        return FLAGS[name] + (f" {value}" if value else "")

    return _PARAMETER.sub(flag, message)


def echo_error(text: str) -> None:
    """Print the one `Error:` line on stderr, the one place the CLI prints an error. Its text may quote
    anything a user or a data set named (a path, a class, a module, an option): control and bidirectional
    characters are escaped (\\x1b, \\u202e), so that none can reorder, restyle or break the terminal's line."""
    typer.echo(f"Error: {escape_controls(text)}", err=True)


def error_line(error: Exception) -> str:
    """One line for any failure: a library error says problem and fix (its parameters named as flags);
    anything else (DuckDB, torch, the OS) is named by its type, with a pointer to the traceback."""
    if isinstance(error, PolysemError):
        return as_flags(str(error))
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    text = str(error).strip()
    first = text.splitlines()[0] if text else "(no message)"
    return f"{type(error).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)"


def objects_line(error: Exception, command_name: str) -> str | None:
    """For a store made from Python objects (a model object, a Dataset), which no command line can give: the
    one line naming the Python calls that do; None for any other error."""
    if not isinstance(error, ObjectsNeeded):
        return None
    return (f"{error.what}, which the command line cannot give: use the Python API, polysem.use(store, "
            f"{error.given}) and then polysem.{command_name}(...)")


def _store(path: str, trust_code: Path | None = None, layer: str | None = None):
    from polysem.query import Store

    return Store(path, trust_code=trust_code.absolute() if trust_code is not None else None, layer=layer)


LayerOption = Annotated[str | None, typer.Option("--layer", help="The layer to work on, of a store holding several (`polysem info` lists them). [default: the store's only layer]")]


def _check_format(fmt: str, allowed=("table", "csv", "json")) -> None:
    if fmt not in allowed:
        raise PolysemError(f"unknown --format '{fmt}'; use one of {', '.join(allowed)}")


TauOption = Annotated[float, typer.Option(help="Ineq. 2: relevance threshold relative to the positive attribution sum.")]
RunTauOption = Annotated[float | None, typer.Option("--tau", help="Ineq. 2: relevance threshold relative to the positive attribution sum. [default: the run's own]")]
POption = Annotated[float, typer.Option("--p", help="Ineq. 2: fraction of a class's images for which the channel must be relevant.")]


def main() -> None:
    """The console entry point: usage errors (an unknown option, a value of the wrong type) become
    one `Error:` line and exit 2 like every other error, not click's usage block."""
    import sys

    import click

    from polysem.util.process import configure_cli_process

    configure_cli_process()  # freed memory kept, short OpenMP spins: before torch loads (polysem.util.process)
    # typer vendors its own click from 0.20 on: catch its exceptions and click's
    usage_errors = tuple(c for c in (click.ClickException, getattr(typer, "TyperException", None)) if c)
    try:
        code = app(standalone_mode=False)
    except (click.exceptions.Abort, typer.Abort):
        sys.exit(130)
    except usage_errors as error:
        message = (error.format_message() if hasattr(error, "format_message") else str(error)).rstrip(".")
        known = cast("typer.core.TyperGroup", typer.main.get_command(app)).commands  # an app of several commands
        command = next((a for a in sys.argv[1:2] if a in known), None)
        echo_error(f"{message}; see `polysem {command + ' ' if command else ''}--help`")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
