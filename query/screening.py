"""Screening for polysemantic channels (docs/method.md sections 2-4) as calls of the `sql/` macros.

The maths is in `sql/screening_macros.sql`; these functions bind the parameters and
return Arrow tables, so a notebook gets exactly what `polysem screen` prints.
"""

from __future__ import annotations

from typing import overload

import pyarrow as pa
import pyarrow.parquet as pq

from polysem.constants import GAMMA, SCREEN_SPLIT, TAU, P
from polysem.errors import QueryError, StoreError
from polysem.query import layout
from polysem.query.diagnostics import damaged_file
from polysem.query.store import Store, as_store
from polysem.util.checks import COUNT_MAX, check_bool, check_int, check_real, check_text

__all__ = ["arv_cosines", "check_limit", "check_thresholds", "class_pairs_sharing_a_channel", "polysemantic_pairs",
           "require_counted_once", "sweep", "why_empty"]


@overload
def check_thresholds(tau: float, p: float) -> tuple[float, float, None]: ...
@overload
def check_thresholds(tau: float, p: float, gamma: float) -> tuple[float, float, float]: ...
def check_thresholds(tau: float, p: float, gamma: float | None = None) -> tuple[float, float, float | None]:
    """Ineq. 2's tau in [0, 1] and p in (0, 1], and the cosine threshold gamma in [-1, 1] (None: not used);
    returns them as Python floats (what DuckDB binds)."""
    return (check_real("tau", tau, 0, 1), check_real("p", p, 0, 1, low_open=True),
            check_real("gamma", gamma, -1, 1, none=True, hint=" (a cosine threshold)"))


def _require_split(store: Store, split: str) -> None:
    if store.reads.split_images(split=split) == 0:
        raise QueryError(f"the store has no {split} images; ingest them first: polysem ingest DATA_DIR --split {split}")
    require_counted_once(store, split)


def require_counted_once(store: Store, split: str) -> None:
    """Refuse to count a split whose parts would miscount: a part without one of polysem's columns (its
    attributions would read as NULL, and every channel as irrelevant) or an image stored twice (a part
    copied under a second name: its images would count twice in every fraction and mean). Reads the
    parts' footers and the image ids only."""
    meta = store.meta()
    first = next(iter(meta["layers"]), None)
    weights = layout.weights_file(store.path, meta["layer"], first or meta["layer"])
    try:
        rows = pq.ParquetFile(weights).metadata.num_rows
    except (OSError, ValueError):
        rows = None  # missing or damaged: the query names it with its fix
    if rows is not None and rows != meta["layer_shape"]["out_channels"]:
        raise StoreError(f"{weights.relative_to(store.path)} holds {rows} channels but layer {meta['layer']} records "
                         f"{meta['layer_shape']['out_channels']}; the store is damaged or was edited: restore it from a "
                         "backup, or ingest into a new `store`")
    for path in layout.layer_files(store.path, split, meta["layer"], first):
        try:
            problem = layout.schema_problem("samples", path)
        except (OSError, ValueError):
            problem = "it cannot be read"
        if problem is not None:
            raise damaged_file(store.path, path.relative_to(store.path), problem)
    row = store.reads.repeated_image(split=split)
    if row is not None:
        raise StoreError(f"split '{split}' holds image {row['image_id']} ({row['path']}) {row['n']} times (a part "
                         "copied under a second name?), so screening would count it more than once: `polysem check` "
                         "names the part and `polysem check --repair` sets it aside")


def check_limit(limit: int | None) -> int | None:
    """At most this many rows: a whole number from 1 to 2**63 - 1, or None for all."""
    return check_int("limit", limit, 1, COUNT_MAX, none=True, hint="; omit it for all rows")


def polysemantic_pairs(store: Store, *, tau: float = TAU, p: float = P, gamma: float = GAMMA,
                       limit: int | None = None, correct_only: bool = False, split: str = SCREEN_SPLIT) -> pa.Table:
    """Candidate (channel, class1, class2) triples with ARV cosine below gamma, lowest first."""
    store = as_store(store)
    tau, p, gamma = check_thresholds(tau, p, gamma)
    limit = check_limit(limit)
    check_bool("correct_only", correct_only)
    check_text("split", split)
    _require_split(store, split)
    return store.reads.screen_pairs(tau=tau, p=p, gamma=gamma, split=split, correct_only=correct_only,
                                    limit=limit if limit is not None else 2**62)


def arv_cosines(store: Store, tau: float = TAU, p: float = P, correct_only: bool = False,
                split: str = SCREEN_SPLIT) -> pa.Table:
    """Every pair of classes relevant for the same channel, with the cosine of their ARVs."""
    check_thresholds(tau, p)
    _require_split(store, split)
    return store.reads.screen_cosines(tau=tau, p=p, split=split, correct_only=correct_only)


def class_pairs_sharing_a_channel(store: Store, tau: float = TAU, p: float = P, split: str = SCREEN_SPLIT) -> pa.Table:
    """Distinct class pairs (class1 < class2) relevant for at least one common channel, with their wnids."""
    check_thresholds(tau, p)
    _require_split(store, split)
    return store.reads.class_pairs_sharing_a_channel(tau=tau, p=p, split=split)


# why every attribution at a layer is zero, said by ingest and by an empty screening
ZERO_ATTRIBUTION_CAUSE = ("the target logits do not depend on it (a classification head whose weights are zero, as "
                          "torchvision's ViT starts with, untrained `weights`, or a layer the logits do not read); "
                          "check `weights` and `layer`")

SWEEP_TAUS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
SWEEP_PS = (0.5, 0.75, 0.9)
SWEEP_GAMMAS = (0.3, 0.5, 0.7, 0.9)


def sweep(store: Store, *, taus: tuple[float, ...] = SWEEP_TAUS, ps: tuple[float, ...] = SWEEP_PS,
          gammas: tuple[float, ...] = SWEEP_GAMMAS, correct_only: bool = False, split: str = SCREEN_SPLIT) -> pa.Table:
    """The screening's counts at every (tau, p, gamma) of the grid, in one scan (`screen_sweep`): relevant
    pairs, channels relevant for two or more classes, their lowest ARV cosine, and the candidates below gamma."""
    for tau in taus:
        for p in ps:
            check_thresholds(tau, p, *gammas[:1])
    for gamma in gammas:
        check_thresholds(taus[0], ps[0], gamma)
    _require_split(store, split)
    return store.reads.sweep(taus=list(taus), ps=list(ps), gammas=list(gammas), split=split,
                             correct_only=correct_only)


def why_empty(store: Store, *, tau: float, p: float, gamma: float, correct_only: bool = False,
              split: str = SCREEN_SPLIT) -> str:
    """Why the screening at these settings finds no candidate: the counts along the way and what to change."""
    row = sweep(store, taus=(tau,), ps=(p,), gammas=(gamma,), correct_only=correct_only, split=split).to_pylist()[0]
    at = f"at tau {tau}, p {p}"
    if row["relevant_pairs"] == 0 and not store.reads.attributed_images(split=split):
        return (f"no channel is relevant for any class: every {split} image's attribution is zero at this layer, "
                f"so no threshold can find one; {ZERO_ATTRIBUTION_CAUSE}")
    if row["relevant_pairs"] == 0:
        return (f"no channel is relevant for any class {at}: lower `tau` or `p` "
                "(`polysem screen --sweep` counts the candidates over a grid)")
    if row["shared_channels"] == 0:
        return (f"{row['relevant_pairs']} relevant (channel, class) pairs {at}, but no channel is relevant for two "
                "classes: lower `p` or `tau` (`polysem screen --sweep` counts the candidates over a grid)")
    shared = row["shared_channels"]
    return (f"{row['relevant_pairs']} relevant (channel, class) pairs {at}; {shared} "
            f"{'channel is' if shared == 1 else 'channels are'} relevant for two or more classes, and the lowest ARV "
            f"cosine among their classes is {row['min_cosine']:.3f} >= gamma {gamma}: raise `gamma` above {row['min_cosine']:.3f} to see them "
            "(`polysem screen --sweep` counts the candidates over a grid)")
