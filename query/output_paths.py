"""Where results may be written: the one place that decides whether an output path is acceptable.

An output is a regular file (replaced atomically), a new path, a folder (the report, evaluate's
plots) or, where a command allows it, `-`: standard output. Everything else is refused before
anything is read or written: an empty name, a FIFO, a character or block device, a socket (also
behind a symbolic link), anything under /dev, /proc or /sys, and anything inside the store, where a
result could replace a file the store reads. An atomic write renames a temporary file over the
target, so writing to a special file would replace the node itself (a device node, or /dev/null
when run as root) rather than write into it: it is never done.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from polysem.errors import QueryError

__all__ = ["STDOUT", "SYSTEM_DIRS", "check_output"]

STDOUT = "-"
SYSTEM_DIRS = (Path("/dev"), Path("/proc"), Path("/sys"))
_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def check_output(out: str | os.PathLike, store: Path | None = None, *, folder: bool = False,
                 stdout: bool = False, name: str = "out") -> Path | None:
    """Refuse an output path before anything is written; return it absolute, or None for standard output.

    `folder`: a folder is expected (created if new) instead of a file. `stdout`: `-` means standard
    output. `name` is the parameter the message names (`out`, `plots_dir`), which the CLI shows as its flag.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise QueryError(f"`{name}` must be a path, got {type(out).__name__}")
    text = os.fspath(out)
    if not isinstance(text, str):
        raise QueryError(f"`{name}` must be a path as text, got {type(text).__name__}")
    what = "a folder" if folder else "a file name"
    if not text.strip():
        raise QueryError(f"`{name}` is empty; give {what}" + (" (or - for standard output)" if stdout else ""))
    if text == STDOUT:
        if stdout:
            return None
        raise QueryError(f"`{name}` - (standard output) is not possible here; give {what}")
    path = Path(text).expanduser().absolute()
    resolved = path.resolve()
    for candidate in (path, resolved):
        if any(candidate.is_relative_to(system) for system in SYSTEM_DIRS):
            shown = "" if candidate is path else f" ({resolved})"  # /dev/stdout resolves to a pipe: say what was given
            hint = "; for standard output give -" if stdout else ""
            raise QueryError(f"{text} is a system path{shown}, not a place for results; "
                             f"choose a path in one of your folders{hint}")
    if store is not None and resolved.is_relative_to(store.resolve()):
        raise QueryError(f"{text} is inside the store {store}; write results somewhere else")
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a FIFO is a FIFO
    except FileNotFoundError:
        return path  # a new path (or a dangling link, which the write replaces)
    except OSError as error:
        raise QueryError(f"cannot inspect {text}: {error.strerror}; choose another path") from error
    kind = stat.S_IFMT(mode)
    if kind in _KINDS:
        link = f" (a link to {resolved})" if path.is_symlink() else ""
        raise QueryError(f"{text} is {_KINDS[kind]}{link}, not a regular file; polysem writes results only to "
                         f"regular files, folders or new paths: choose another path"
                         + (", or - for standard output" if stdout else ""))
    if not folder and stat.S_ISDIR(mode):
        raise QueryError(f"{text} is a folder; give a file name, e.g. {path / 'result.parquet'}")
    if folder and not stat.S_ISDIR(mode):
        raise QueryError(f"{text} is a file; give a folder (for the plots or the report)")
    return path
