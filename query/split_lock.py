"""A split's lock: one ingest or compaction of a split at a time, and what a killed compaction left undone.

Kept apart from `query.compact` so that `check --repair` can hold the locks without importing the
store-level compaction (which imports the Store)."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from polysem.errors import StoreBusy
from polysem.query import layout
from polysem.query.confine import check_entry, check_tree, open_lock
from polysem.util import atomic

__all__ = ["STAGING", "lock_split", "recover_staging", "staging_folder"]

STAGING = ".compact"


def lock_split(store_path: Path, split: str):
    """An open file holding the split's exclusive lock (closing it releases it): one ingest or
    compaction per split at a time, or two ingests would store the same missing images twice.

    Whoever takes the lock first undoes what a killed compaction left (`recover_staging`), so an ingest
    never reads a split whose folder is, for the moment, in staging."""
    check_tree(store_path)  # the split's folders are renamed and removed below: none may lead out of the store
    split_folder = layout.part_dir(store_path, "samples", split)
    with atomic.writing(split_folder, folder=store_path, into_folder=True):  # named for the split, not its lock
        handle = open_lock(store_path, layout.split_lock_path(store_path, split))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreBusy(f"another ingest of split '{split}' into {store_path} is running (or a compaction of it); "
                        "wait for it, or stop it and run this again to resume") from None
    try:
        recover_staging(store_path, layout.part_dir(store_path, "samples", split), staging_folder(store_path, split))
    except BaseException:
        handle.close()
        raise
    return handle


def staging_folder(store_path: Path, split: str) -> Path:
    return store_path / STAGING / "samples" / split


def recover_staging(store_path: Path, folder: Path, staging: Path) -> None:
    """Undo what a killed compaction left: the staging folder is garbage whether it holds an
    incomplete new set (killed before the swap) or the old set (killed after it)."""
    moved = staging.with_name(staging.name + ".old")
    for path in (folder, staging, moved):
        check_entry(store_path, path)  # each rename and removal below stays inside the store
    if not folder.exists() and moved.exists():  # killed inside the two-rename fallback: put the old set back
        os.rename(moved, folder)
    for leftover in (staging, moved):
        if leftover.exists():
            shutil.rmtree(leftover)
