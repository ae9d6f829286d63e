"""The base of the library's results: frozen dataclasses whose fields mypy checks at every consumer (the CLI's
printing included), with `to_dict()` for the plain data the command line prints as JSON.

    run = polysem.disentangle(store, 1660, concept1=[530], concept2=[938])
    run.run_id                 # a field, checked by mypy
    run.to_dict()              # {"run_id": ..., "channel": ..., ...}: JSON-ready (with `default=str` for times)
    run["run_id"]              # the dict read of earlier releases, kept for notebooks: to_dict()["run_id"]
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Result", "plain"]


def plain(value: Any) -> Any:
    """`value` as plain data: a Result as its `to_dict()`, lists and tuples as lists, dicts with plain values."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Result:
    """A frozen dataclass of the library's answers (subclasses are `@dataclass(frozen=True)`).

    `to_dict()` gives every field in order as plain data; a subclass adds the keys derived from its fields
    that the JSON output has always had (a run's `concept1`, a concept's `frac1`). `result[key]` reads that
    dict, the way the results of earlier releases (dicts) were read.
    """

    def to_dict(self) -> dict[str, Any]:
        """Every field, in order, as plain data (nested results as dicts)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]
