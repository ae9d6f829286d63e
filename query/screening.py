"""Screening for polysemantic channels (docs/method.md sections 2-4) as calls of the `sql/` macros.

The maths is in `sql/screening.sql`; these functions bind the parameters and
return Arrow tables, so a notebook gets exactly what `polysem screen` prints.
"""

from __future__ import annotations

import pyarrow as pa

from polysem.constants import GAMMA, SCREEN_SPLIT, TAU, P
from polysem.errors import QueryError
from polysem.query.store import Store

__all__ = ["arv_cosines", "check_limit", "check_thresholds", "class_pairs_sharing_a_channel", "polysemantic_pairs"]


def check_thresholds(tau: float, p: float, gamma: float | None = None) -> None:
    for name, value in (("tau", tau), ("p", p), ("gamma", gamma)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise QueryError(f"`{name}` must be a number, got {value!r}")
    if not 0 <= tau <= 1:
        raise QueryError(f"`tau` must be in [0, 1], got {tau}")
    if not 0 < p <= 1:
        raise QueryError(f"`p` must be in (0, 1], got {p}")
    if gamma is not None and not -1 <= gamma <= 1:
        raise QueryError(f"`gamma` is a cosine threshold in [-1, 1], got {gamma}")


def _require_split(store: Store, split: str) -> None:
    n = store.run("split_images", split=split).column("n")[0].as_py()
    if n == 0:
        raise QueryError(f"the store has no {split} images; ingest them first: polysem ingest DATA_DIR --split {split}")


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise QueryError(f"`limit` must be at least 1, got {limit}; omit it for all rows")


def polysemantic_pairs(store: Store, *, tau: float = TAU, p: float = P, gamma: float = GAMMA,
                       limit: int | None = None, correct_only: bool = False, split: str = SCREEN_SPLIT) -> pa.Table:
    """Candidate (channel, class1, class2) triples with ARV cosine below gamma, lowest first."""
    check_thresholds(tau, p, gamma)
    check_limit(limit)
    _require_split(store, split)
    return store.run("screen_pairs", tau=tau, p=p, gamma=gamma, split=split, correct_only=correct_only,
                     limit=limit if limit is not None else 2**62)


def arv_cosines(store: Store, tau: float = TAU, p: float = P, correct_only: bool = False,
                split: str = SCREEN_SPLIT) -> pa.Table:
    """Every pair of classes relevant for the same channel, with the cosine of their ARVs."""
    check_thresholds(tau, p)
    _require_split(store, split)
    return store.run("screen_cosines", tau=tau, p=p, split=split, correct_only=correct_only)


def class_pairs_sharing_a_channel(store: Store, tau: float = TAU, p: float = P, split: str = SCREEN_SPLIT) -> pa.Table:
    """Distinct class pairs (class1 < class2) relevant for at least one common channel, with their wnids."""
    check_thresholds(tau, p)
    return store.run("class_pairs_sharing_a_channel", tau=tau, p=p, split=split)
