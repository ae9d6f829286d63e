"""Write docs/cli-reference.md from the command line itself: every command, argument and option.

The page is generated, never edited: this script walks `typer.main.get_command(polysem.cli.app)` and
renders each command's help text and parameters as Markdown, itself, so the page does not depend on the
terminal's width or on rich's layout (the way sqlite-utils generates docs/cli-reference.rst with cog).
Hidden options are left out, as `--help` leaves them out.

Usage:
    python tools/cli_reference.py           rewrite docs/cli-reference.md
    python tools/cli_reference.py --check   exit 1 when docs/cli-reference.md differs from what it would write
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli-reference.md"
PROGRAM = "polysem"

HEADER = f"""\
# CLI reference

Every `{PROGRAM}` command with its arguments and options, as `{PROGRAM} COMMAND --help` gives them.
This page is generated from the command line itself by `python tools/cli_reference.py`; do not edit
it by hand (`tests/test_docs.py` fails when it is out of date). How to use the commands, with the
rules behind the options, is in [commands.md](commands.md) and [ingest.md](ingest.md).
"""


def root_command():
    import typer

    from polysem.cli import app

    return typer.main.get_command(app)


def is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of the root, every group and every command, depth first, names sorted; hidden ones left out."""
    yield path, command
    if is_group(command):
        for name, sub in sorted(command.commands.items()):
            if not getattr(sub, "hidden", False):
                yield from walk(sub, (*path, name))


def title(path: tuple[str, ...]) -> str:
    return " ".join((PROGRAM, *path))


def anchor(path: tuple[str, ...]) -> str:
    """The id GitHub gives the heading `## polysem plot wordnet`."""
    return "-".join((PROGRAM, *path))


def prose(text: str) -> str:
    """Help text as Markdown prose: `<` and `>` outside code spans escaped, so n_<split> is not read as HTML."""
    pieces = text.split("`")  # odd pieces are code spans, shown as written
    return "`".join(piece if i % 2 else piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    for i, piece in enumerate(pieces))


def cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return prose(" ".join(text.split())).replace("|", "\\|")


def help_text(command: Any) -> str:
    """The command's help as paragraphs, click's `\\b` markers and `\\f` tail removed."""
    text = inspect.cleandoc(command.help or "").split("\f")[0]
    paragraphs = [" ".join(line.strip() for line in block.splitlines() if line.strip() != "\b")
                  for block in text.split("\n\n")]
    epilog = inspect.cleandoc(getattr(command, "epilog", None) or "")
    return "\n\n".join(p for p in [*paragraphs, epilog] if p.strip())


def is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def type_name(param: Any, ctx: Any) -> str:
    """The value a parameter takes (`int`, `path`, `a|b`), or `flag` for a boolean switch."""
    if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
        return "flag"
    display = getattr(param, "display_type", None)
    if callable(display):
        return str(display(ctx)).strip("<>")
    kind = getattr(param, "type", None)
    return str(getattr(kind, "name", kind or "text")).lower()


def default_text(param: Any) -> str:
    """The default as `--help` would show it; empty when there is none worth showing."""
    if getattr(param, "show_default", True) is False or getattr(param, "required", False):
        return ""
    default = getattr(param, "default", None)
    if default is None or callable(default):
        return ""
    if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
        if getattr(param, "secondary_opts", None):
            return (param.opts if default else param.secondary_opts)[0]
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(str(item) for item in default) if default else ""
    return str(getattr(default, "value", default))


def metavar(param: Any) -> str:
    """An argument as the usage line shows it: `RUN_ID`, `[NAME]` when optional, `NAME...` for several."""
    name = getattr(param, "metavar", None) or (param.name or "").upper()
    if getattr(param, "nargs", 1) == -1:
        name += "..."
    return name if getattr(param, "required", False) else f"[{name}]"


def usage(path: tuple[str, ...], command: Any) -> str:
    """`polysem verify [OPTIONS] RUN_ID`: the usage line, from the parameters rather than click's formatter."""
    words = [title(path), "[OPTIONS]"]
    words += [metavar(param) for param in command.params if is_argument(param)]
    if is_group(command):
        words.append("COMMAND [ARGS]...")
    return " ".join(words)


def option_flags(param: Any) -> str:
    flags = [*param.opts, *getattr(param, "secondary_opts", [])]
    return " / ".join(f"`{flag}`" for flag in flags)


def render_command(path: tuple[str, ...], command: Any, ctx: Any) -> list[str]:
    """The section of one command (or group): usage, help, arguments, options, subcommands."""
    lines = [f"## {title(path)}", "", "```", usage(path, command), "```", "", prose(help_text(command)), ""]
    arguments = [p for p in command.params if is_argument(p) and not getattr(p, "hidden", False)]
    options = [p for p in command.params if is_option(p) and not getattr(p, "hidden", False)]
    if arguments:
        lines += ["| argument | takes | required | meaning |", "| --- | --- | --- | --- |"]
        for param in arguments:
            required = "yes" if getattr(param, "required", False) else "no"
            lines.append(f"| `{(param.metavar or param.name or '').upper()}` | {cell(type_name(param, ctx))} | "
                         f"{required} | {cell(getattr(param, 'help', None) or '')} |")
        lines.append("")
    if options:
        lines += ["| option | takes | default | meaning |", "| --- | --- | --- | --- |"]
        for param in options:
            default = default_text(param)
            envvar = getattr(param, "envvar", None)
            meaning = getattr(param, "help", None) or ""
            if envvar:
                names = [envvar] if isinstance(envvar, str) else list(envvar)
                meaning += f" Environment: {', '.join(f'`{name}`' for name in names)}."
            lines.append(f"| {option_flags(param)} | {cell(type_name(param, ctx))} | "
                         f"{cell(f'`{default}`') if default else ''} | {cell(meaning)} |")
        lines.append("")
    if is_group(command):
        subs = [(name, sub) for name, sub in sorted(command.commands.items()) if not getattr(sub, "hidden", False)]
        lines += ["| command | what it does |", "| --- | --- |"]
        for name, sub in subs:
            first = help_text(sub).split("\n\n")[0]
            lines.append(f"| [`{title((*path, name))}`](#{anchor((*path, name))}) | {cell(first)} |")
        lines.append("")
    return lines


def render() -> str:
    """The whole page."""
    root = root_command()
    contexts: dict[tuple[str, ...], Any] = {}
    body: list[str] = []
    for path, command in walk(root):
        parent = contexts.get(path[:-1]) if path else None
        contexts[path] = command.context_class(command, info_name=path[-1] if path else PROGRAM, parent=parent)
        body += render_command(path, command, contexts[path])
    text = HEADER + "\n" + "\n".join(body)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is out of date; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python tools/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
