"""A store is a closed world: nothing polysem reads, writes, renames or deletes in it leads outside it.

A store someone sends you is untrusted input. A symbolic link inside it (a folder, a part, a lock file,
the catalog) would let a write, a rename, a truncation or a removal reach the user's own files; a FIFO,
socket or device would hang a reader or feed it. So:

- `check_tree` walks the whole store without following links and refuses a link or a special file
  anywhere in it, in one line naming the entry and the fix, before a command opens or writes anything;
- `check_entry` checks one path, component by component, right before a removal or a rename;
- `open_lock` opens a lock file without following a link, without blocking on a FIFO and without
  truncating it (opening with "w" would empty whatever a link points to).

The store's own folder may itself be a link: the user named it. Hard links matter only where a file is
written in place: polysem replaces its own files by rename, but DuckDB writes the catalog and its
write-ahead log in place, so those two must have no other name (`IN_PLACE`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

from polysem.errors import StoreError

__all__ = ["IN_PLACE", "UnsafeStore", "check_entry", "check_tree", "open_lock", "recorded_path"]

IN_PLACE = ("catalog.duckdb", "catalog.duckdb.wal")  # written in place by DuckDB: a second name would change too


class UnsafeStore(StoreError):
    """The store holds an entry that could lead a command outside it (a link) or hang it (a special file)."""


def _kind(mode: int) -> str | None:
    """What a non-plain entry is, in words; None for a plain file or folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    return "a special file"


def _refusal(store: Path, path: Path, kind: str) -> UnsafeStore:
    try:
        shown = path.relative_to(store)
    except ValueError:
        shown = path
    if kind == "a symbolic link":
        try:
            kind += f" to {os.readlink(path)}"
        except OSError:
            pass
        fix = ("a store holds only its own files and folders, and polysem never follows a link out of one: "
               f"replace the link with a copy of what it points to, or remove it (rm '{path}'), then run the "
               "command again")
    else:
        fix = f"polysem never writes one and would hang or misread it: remove it (rm '{path}') and run the command again"
    return UnsafeStore(f"{shown} in the store {store} is {kind}; {fix}")


def check_tree(store: Path) -> None:
    """Refuse a store that holds a link, a special file or a name that is not UTF-8 anywhere (looked at with lstat:
    nothing is followed or opened). A missing store passes: the caller decides what a missing store means."""
    try:
        root = os.stat(store)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(root.st_mode):
        raise UnsafeStore(f"the store {store} is {_kind(root.st_mode) or 'a file'}, not a folder; "
                          "name a store folder (--store)")
    pending = [store]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue  # removed meanwhile (a compaction's staging folder)
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            kind = _kind(mode)
            if kind is not None:
                raise _refusal(store, Path(entry.path), kind)
            if not entry.name.isascii() and not _utf8(entry.name):
                raise UnsafeStore(f"{entry.path!r} in the store {store} has a name that is not UTF-8, which DuckDB "
                                  "cannot list (every read of its folder fails); rename it with `mv`, or remove it")
            if folder == store and entry.name in IN_PLACE and (links := entry.stat(follow_symlinks=False).st_nlink) > 1:
                raise UnsafeStore(f"{entry.name} in the store {store} has {links} names (hard links): DuckDB writes it "
                                  "in place, so a file elsewhere would change with it; give the store its own copy "
                                  f"(copy '{entry.path}' to a new file, then move the copy over it), then run the "
                                  "command again")
            if stat.S_ISDIR(mode):
                pending.append(Path(entry.path))


def _utf8(name: str) -> bool:
    """Is a file name (as Python decodes it: bytes that are not UTF-8 become surrogates) valid UTF-8?"""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_entry(store: Path, path: Path) -> Path:
    """`path` (inside `store`), after checking that no component below the store is a link or a special
    file, so that a removal or rename of it stays inside the store. Missing components pass."""
    relative = path.relative_to(store)
    current = store
    for part in relative.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return path
        kind = _kind(mode)
        if kind is not None:
            raise _refusal(store, current, kind)
    return path


def open_lock(store: Path, path: Path) -> IO[str]:
    """The lock file `path` of `store`, opened for flock: created when missing, never truncated, never
    through a link (O_NOFOLLOW) and never blocking on a FIFO (O_NONBLOCK); anything but a plain file is
    refused. Closing the returned file releases its lock."""
    check_entry(store, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _refusal(store, path, "a symbolic link") from None
        if error.errno == errno.ENXIO:  # a FIFO without a reader, or a socket
            raise _refusal(store, path, _kind(os.lstat(path).st_mode) or "a special file") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refusal(store, path, _kind(mode) or "a special file")
    return os.fdopen(fd, "r+")


def recorded_path(store: Path, recorded: object, folder: str) -> Path | None:
    """The file a catalog row names (`recorded`, relative to the store), when it is one polysem could have
    written: a relative path inside `folder` of the store, with no `..`, reached through no link. None
    otherwise: a forged row must not make polysem remove or overwrite a file elsewhere."""
    if not isinstance(recorded, str) or not recorded:
        return None
    relative = Path(recorded)
    if relative.is_absolute() or ".." in relative.parts or relative.parts[: len(Path(folder).parts)] != Path(folder).parts:
        return None
    try:
        return check_entry(store, store / relative)
    except UnsafeStore:
        return None
