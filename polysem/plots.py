"""Figures: the WordNet-over-cosine scatter (supplement Fig. 4), and the evaluation plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from polysem.constants import GAMMA, P, TAU
from polysem.errors import PolysemError
from query.screening import arv_cosines
from query.store import Store


def wordnet_scatter(store: Store, out: str | Path, tau: float = TAU, p: float = P, gamma: float = GAMMA) -> int:
    """WordNet path similarity over ARV cosine for every (channel, class pair); returns the point count."""
    cosines = arv_cosines(store, tau, p)
    similarity = {(r["class1"], r["class2"]): r["path_similarity"]
                  for r in store.query("SELECT * FROM class_similarity").to_pylist()}
    points = [(r["cosine"], similarity[(r["class1"], r["class2"])]) for r in cosines.to_pylist()
              if similarity.get((r["class1"], r["class2"])) is not None]
    if not points:
        raise PolysemError("no WordNet similarities in the store for these pairs; run `polysem wordnet` first")
    xs, ys = zip(*points)
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.scatter(xs, ys, s=10, alpha=0.6, color="tab:blue", label=f"{len(points)} class pairs sharing a channel")
    axes.axvline(gamma, color="tab:red", linestyle="--", label=f"gamma = {gamma}")
    axes.set_xlabel("cosine similarity of the two classes' ARVs")
    axes.set_ylabel("WordNet path similarity of the two classes")
    axes.set_title(f"Semantic vs ARV similarity (tau={tau}, p={p})")
    axes.legend(loc="upper left")
    figure.tight_layout()
    save(figure, out)
    return len(points)


def save(figure, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
