"""Importing a user's module from a recorded folder, without leaving sys.path changed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["importable_from"]


@contextmanager
def importable_from(folder: str | None) -> Iterator[None]:
    """sys.path with `folder` first, for the duration of an import; restored afterwards."""
    saved = list(sys.path)
    if folder is not None:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path[:] = saved
