"""The concepts of a channel: its relevant classes grouped by complete linkage on their ARV cosines.

The paper screens class *pairs* (Theorem 3.1). A channel relevant for more classes
serves more than two of them, and several of its classes can belong together
(cowboy hat and sombrero). Here the classes a channel is relevant for (Ineq. 2,
tau, p) are grouped into concepts by complete-linkage agglomerative clustering
with the ARV cosine as similarity: two groups merge only when every pair of
classes across them has cosine >= gamma, so no concept holds a polysemantic
pair. A channel with two or more concepts is polysemantic.

Complete linkage over a channel's few relevant classes is a loop, not a query,
so it runs here on the cosines of `arv_cosine(tau, p)` and is recorded in the
`channel_concepts` table with the parameters it was computed with.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa

from polysem.constants import GAMMA, SCREEN_SPLIT, TAU, P
from polysem.errors import EmptyAnswer, PolysemError, ThresholdWarning
from polysem.query.records import now, record_channel_concepts
from polysem.query.screening import arv_cosines, check_limit, check_thresholds
from polysem.query.store import Store, as_store
from polysem.util.checks import check_bool
from polysem.util.results import Result

__all__ = ["SCHEMA", "Screening", "channel_concepts", "complete_linkage", "group_channels", "min_cosine_between",
           "screening"]

SCHEMA = pa.schema([
    ("channel", pa.int32()),
    ("concepts", pa.list_(pa.list_(pa.int32()))),
    ("names", pa.list_(pa.list_(pa.string()))),
    ("sizes", pa.list_(pa.int32())),
    ("min_cosine", pa.float64()),
])


def _similarity(cosine) -> float:
    """A missing or NaN cosine (a zero ARV) never lets two classes share a concept."""
    return -math.inf if cosine is None or math.isnan(cosine) else cosine


def complete_linkage(classes, cosine: dict[tuple[int, int], float], gamma: float) -> list[list[int]]:
    """Group `classes` (ids) into concepts; `cosine[(a, b)]` with a < b is their ARV cosine.

    Agglomerative, complete linkage: the similarity of two groups is the lowest cosine
    between their classes; the most similar two groups merge while that is >= gamma.
    Ties go to the pair of groups whose smallest class ids are smallest (first group, then
    second), so the grouping is deterministic. Concepts come sorted by their smallest class
    id, each sorted by class id.
    """
    groups = [[c] for c in sorted(set(classes))]

    def linkage(a: list[int], b: list[int]) -> float:
        return min(_similarity(cosine.get((min(x, y), max(x, y)))) for x in a for y in b)

    while len(groups) > 1:
        best = None  # (-linkage, i, j): the smallest tuple is the highest linkage, then the lowest ids
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                value = linkage(groups[i], groups[j])
                if value >= gamma and (best is None or (-value, i, j) < best):
                    best = (-value, i, j)
        if best is None:
            break
        _, i, j = best
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
        groups.sort(key=lambda g: g[0])
    return groups


def min_cosine_between(concepts: list[list[int]], cosine: dict[tuple[int, int], float]) -> float | None:
    """The lowest cosine over pairs of classes in different concepts (None for one concept)."""
    values = [_similarity(cosine.get((min(x, y), max(x, y))))
              for i, a in enumerate(concepts) for b in concepts[i + 1:] for x in a for y in b]
    if not values:
        return None
    low = min(values)
    return None if low == -math.inf else low


def group_channels(cosines: list[dict], gamma: float, names: dict[int, str]) -> list[dict]:
    """The polysemantic channels among rows of `arv_cosine` (channel, class1, class2, cosine), with their
    concepts; lowest between-concept cosine first, then by channel."""
    per_channel: dict[int, dict[tuple[int, int], float]] = defaultdict(dict)
    for row in cosines:
        per_channel[row["channel"]][(row["class1"], row["class2"])] = row["cosine"]
    rows = []
    for channel, cosine in per_channel.items():
        classes = {c for pair in cosine for c in pair}
        concepts = complete_linkage(classes, cosine, gamma)
        if len(concepts) < 2:
            continue
        rows.append({"channel": channel, "concepts": concepts,
                     "names": [[names.get(c, str(c)) for c in concept] for concept in concepts],
                     "sizes": [len(concept) for concept in concepts],
                     "min_cosine": min_cosine_between(concepts, cosine)})
    # a NaN-only channel (min_cosine None) sorts last: nothing says how dissimilar its concepts are
    rows.sort(key=lambda r: (r["min_cosine"] is None, r["min_cosine"] or 0.0, r["channel"]))
    return rows


def channel_concepts(store: Store | str, *, tau: float = TAU, p: float = P, gamma: float = GAMMA,
                     limit: int | None = None, correct_only: bool = False, record: bool = True) -> pa.Table:
    """Per polysemantic channel: channel, concepts (lists of class ids), names, sizes, min_cosine; the lowest
    min_cosine first. With `record`, the result replaces the rows of the same parameters in `channel_concepts`."""
    store = as_store(store)
    tau, p, gamma = check_thresholds(tau, p, gamma)
    limit = check_limit(limit)
    check_bool("correct_only", correct_only)
    check_bool("record", record)
    cosines = arv_cosines(store, tau, p, correct_only=correct_only).to_pylist()
    names = store.class_names()
    rows = group_channels(cosines, gamma, names)
    if record:
        key = {"tau": tau, "p": p, "gamma": gamma, "split": SCREEN_SPLIT, "correct_only": correct_only}
        computed_at = now()
        with store.transaction() as tx:
            record_channel_concepts(tx, key, [{**{c: r[c] for c in ("channel", "concepts", "names", "sizes",
                                                                    "min_cosine")}, "computed_at": computed_at}
                                              for r in rows])
    return pa.Table.from_pylist(rows[:limit] if limit is not None else rows, schema=SCHEMA)


@dataclass(frozen=True)
class Screening(Result):
    """What `screening` found, one of three answers (`kind`).

    Args (fields):
        kind: "pairs" (`polysemantic_pairs`: channel, class1, class2, names, cosine, wordnet_similarity,
            fraction1, fraction2), "concepts" (`channel_concepts`: channel, concepts, names, sizes, min_cosine)
            or "sweep" (`sweep`: the candidate counts per tau, p and gamma of the grid).
        table: the answer, one row per pair, channel or grid point.
        tau, p, gamma: the thresholds (the grid's own for a sweep).
        why_empty: for pairs or concepts with no row, why (the counts along the way and what to change).
        tau_warning: when tau is far from the paper's setting for a layer of this many channels
            (`tau_reading`), what that means and how to choose one; else None.
    """

    kind: str
    table: pa.Table
    tau: float
    p: float
    gamma: float
    why_empty: str | None = None
    tau_warning: str | None = None


def screen(store: Store | str, *, tau: float = TAU, p: float = P, gamma: float = GAMMA, by_concept: bool = False,
           limit: int | None = None, correct_only: bool = False) -> pa.Table:
    """`polysem.screen`: the polysemantic pairs (or, `by_concept`, each polysemantic channel's concepts) as a
    table, as `polysem screen` prints them. An empty answer warns with why (`EmptyAnswer`, the CLI's words),
    and a tau far from the paper's setting for the layer warns too (`ThresholdWarning`): a notebook
    shows both under the cell.

    Args:
        store: the store, or its folder.
        tau, p: Ineq. 2's relevance threshold and fraction of a class's images.
        gamma: Theorem 3.1's cosine threshold.
        by_concept: each polysemantic channel's concepts instead of its pairs.
        limit: at most this many rows; None for all.
        correct_only: count only correctly classified images.

    Returns:
        A pyarrow.Table: one row per (channel, class pair) below gamma, lowest cosine first; or per channel
        with its concepts.

    Example:
        >>> polysem.screen(store, limit=3).column("channel").to_pylist()
        [1660, 522, 895]
    """
    found = screening(store, tau=tau, p=p, gamma=gamma, by_concept=by_concept, limit=limit,
                      correct_only=correct_only)
    if found.why_empty is not None:
        warnings.warn(found.why_empty, EmptyAnswer, stacklevel=2)
    if found.tau_warning is not None:
        warnings.warn(found.tau_warning, ThresholdWarning, stacklevel=2)
    return found.table


PAPER_CHANNELS = 2048  # ResNet-50's layer4.2.conv3, where the paper's tau of 0.03 was chosen
TAU_FACTOR = 10  # tau more than this factor away from the paper's multiple of the mean share 1/C is warned of


def tau_far(tau: float, channels: int) -> bool:
    """True when tau x C is more than TAU_FACTOR from the paper's 0.03 x 2048, either way (docs/method.md,
    section 2)."""
    paper, mine = TAU * PAPER_CHANNELS, tau * channels
    return not paper / TAU_FACTOR <= mine <= paper * TAU_FACTOR


def tau_reading(tau: float, channels: int, counts: tuple[int, int] | None = None) -> str | None:
    """Why `tau` is far from the paper's setting for a layer of `channels` channels, or None.

    Ineq. 2 compares a channel's share of an image's positive attribution with tau. The mean share is 1/C, so
    what tau means depends on C: the paper's 0.03 is about 61 times 1/2048 in ResNet-50's last layer, but below
    1/6 in a 6-channel layer. Warned of beyond a factor of TAU_FACTOR either way. Shares are not spread evenly
    over the channels, so how many pass is the data's to say: `counts` (relevant (channel, class) pairs, the pairs
    of the classes with images in the screened split) at the screening's p, when given, is stated."""
    if not tau_far(tau, channels):
        return None
    paper, mine = TAU * PAPER_CHANNELS, tau * channels
    bar = ("no bar at all (every share of 0 or more passes)" if mine <= 0 else
           f"a bar {paper / mine:.3g} times lower than the paper's" if mine < paper else
           f"a bar {mine / paper:.3g} times higher than the paper's")
    found = (f"; here {counts[0]} of the {counts[1]} (channel, class) pairs are relevant at it (Ineq. 2)"
             if counts is not None else "")
    return (f"tau {tau} is {mine:.3g} times the mean share 1/C of this layer's {channels} channels, where the paper's "
            f"tau {TAU} is {paper:.3g} times 1/{PAPER_CHANNELS}: {bar}{found}; `polysem screen --sweep` counts the "
            "candidates over a grid of tau, p and gamma, to choose one")


def screening(store: Store | str, *, tau: float = TAU, p: float = P, gamma: float = GAMMA, by_concept: bool = False,
              sweep: bool = False, limit: int | None = None, correct_only: bool = False) -> Screening:
    """What `polysem screen` does, as one call: the polysemantic pairs, or (`by_concept`) each polysemantic
    channel's concepts, or (`sweep`) the candidate counts over a grid of tau x p x gamma in one scan.

    Args:
        store: the store, or its folder.
        tau, p: Ineq. 2's relevance threshold and fraction of a class's images.
        gamma: Theorem 3.1's cosine threshold: pairs below it are candidates (classes at or above it share a
            concept).
        by_concept: group each polysemantic channel's classes into concepts (recorded in `channel_concepts`).
        sweep: count the candidates over the grid instead (its own tau, p and gamma: give none of them, nor
            `by_concept` or `limit`).
        limit: at most this many pairs (lowest cosine first), or channels with `by_concept`.
        correct_only: use only correctly classified train images.

    Returns:
        A `Screening`; an empty answer says why in `why_empty`.

    Example:
        >>> found = screening(store, by_concept=True, limit=5)
        >>> found.table.column("channel").to_pylist()
        [1660, 522, 895, 242, 1404]
    """
    from polysem.query import screening as screen

    store = as_store(store)
    sweep = check_bool("sweep", sweep)
    if sweep:
        if by_concept or limit is not None or (tau, p, gamma) != (TAU, P, GAMMA):
            raise PolysemError("`sweep` counts candidates over its own grid of tau, p and gamma; drop `by_concept`, "
                               "`limit`, `tau`, `p` and `gamma`")
        return Screening("sweep", screen.sweep(store, correct_only=correct_only), tau, p, gamma)
    if check_bool("by_concept", by_concept):
        table = channel_concepts(store, tau=tau, p=p, gamma=gamma, limit=limit, correct_only=correct_only)
    else:
        table = screen.polysemantic_pairs(store, tau=tau, p=p, gamma=gamma, limit=limit, correct_only=correct_only)
    why = None if table.num_rows else screen.why_empty(store, tau=tau, p=p, gamma=gamma, correct_only=correct_only)
    channels = store.meta()["layer_shape"]["out_channels"]
    counts = None
    if tau_far(tau, channels):  # say how many pairs the data lets through, not a guess from C alone
        row = store.reads.relevant_pair_count(tau=float(tau), p=float(p), split=SCREEN_SPLIT,  # numpy's too
                                              correct_only=correct_only)
        counts = (row["relevant"], channels * row["classes"])
    return Screening("concepts" if by_concept else "pairs", table, tau, p, gamma, why,
                     tau_reading(tau, channels, counts))
