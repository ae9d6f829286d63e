"""Calls that block in C (a DuckDB query, torch.distributed's store and process group) made stoppable by
Ctrl-C: the call runs in a helper thread while the main thread waits where Python delivers signals."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["interruptible"]

T = TypeVar("T")


def interruptible(work: Callable[[], T], message: str, *, stop: Callable[[], None] | None = None,
                  name: str = "polysem-wait", poll: float = 0.05) -> T:
    """`work()`, stopped by Ctrl-C: a KeyboardInterrupt with `message`. In the main thread `work` runs in a
    daemon helper thread; on Ctrl-C, `stop()` (when given) asks it to end and it is waited for, else it is left
    behind to end with the process. Elsewhere (Python delivers signals to the main thread only) it runs as is."""
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C may later return too early

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # noqa: BLE001 -- handed to the waiting thread, which raises it
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while not done.wait(poll):
            pass
    except KeyboardInterrupt:
        if stop is not None:
            stop()
            done.wait()
        raise KeyboardInterrupt(message) from None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
