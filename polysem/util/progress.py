"""A rich progress bar with images/s and ETA, or nothing when progress is off."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["RateColumn", "progress_bar"]


class RateColumn(ProgressColumn):
    def __init__(self, unit: str = "img"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


def _widgets_missing(console: Console) -> bool:
    """A Jupyter kernel without ipywidgets, where rich's live bar would warn at every bar instead of drawing."""
    if not console.is_jupyter:
        return False
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is None


@contextmanager
def _text_bar(description: str, total: int, unit: str, stream=None) -> Iterator[Callable[[int], None]]:
    """A one-line text bar rewritten in place with a carriage return (a notebook's output area understands it),
    at most every half second, then its final state and a newline."""
    stream = stream or sys.stderr
    started = last = time.monotonic()
    done = 0

    def show() -> None:
        elapsed = time.monotonic() - started
        rate = f"{done / elapsed:,.1f} {unit}/s" if elapsed > 0 and done else f"- {unit}/s"
        stream.write(f"\r{description} {done}/{total} {rate} {elapsed:.0f} s")
        stream.flush()

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= 0.5:
            last = time.monotonic()
            show()

    try:
        yield advance
    finally:
        show()
        stream.write("\n")


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`. The bar goes to stderr so stdout stays clean for results; in a Jupyter kernel
    without ipywidgets it is a plain text line, without rich's warning."""
    if not enabled:
        yield lambda n: None
        return
    if _widgets_missing(Console(stderr=True)):
        with _text_bar(description, total, unit) as advance:
            yield advance
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
