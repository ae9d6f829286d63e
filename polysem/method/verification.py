"""Checking a disentanglement run with the screening itself (`polysem verify`), recorded in `verifications`.

A split resolves a polysemantic channel when each new channel c'_j serves one concept. The
check applies the paper's own tests to the new channels:

- relevance (Ineq. 2): the disentangled model runs over the train images of every class the
  original channel was relevant for (and the run's concept classes); gradient x activation of
  the image's class logit is taken at the output of the new layer's `expanded` layer, summed over the
  positions the store counts, and c'_j is relevant for an image when its attribution is >= tau times
  the positive sum over *all* units of `expanded` (the new layer's channels: the untouched ones,
  c'_1..c'_k and r of every split channel of the model); relevant for a class when that holds for at
  least p of its images.
- dissimilarity (Theorem 3.1): the ARVs of c'_j follow from the ARV identity with c'_j's own
  weight row, R = W'_j * mean S: window sums are unchanged by the split, so they come from the
  store (`weight_arv_cosine`), with no model pass.

The verdict (decided in SQL, `unit_verdicts`): c'_j *serves its concept* when it is relevant for at
least one class of concept j and for no class of another concept; it is *monosemantic* when no two of
its relevant classes have ARV cosine below gamma. The run *resolves* the channel only when every c'_j
serves its concept and is monosemantic; each unit's verdict says why. The residual r is not checked: it holds only the shared inputs by construction and enters
the merge with the factor -(k - 1), so its attribution has the opposite sign of its activation.
A NaN cosine (a class whose ARV under c'_j is zero: it reaches c'_j only through the bias) is
left out of the minimum.

The attributions are cached per class like the feature maps, in
STORE/cache/verify/<group_id>/<split>/class-<id>.npz.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import cast

import numpy as np
from torch import nn

from polysem.constants import GAMMA, SCREEN_SPLIT, TAU, P
from polysem.ingest.attribution import attribute_batch
from polysem.ingest.models import resolve_device, stored_transform
from polysem.ingest.units import DEFAULT_POSITIONS, layer_positions
from polysem.method.disentangling import DisentangledLayer
from polysem.method.features import ModelPass, attributed_logit, cached_array, per_image_attributions, remap_paths
from polysem.method.runs import load_model, run_on_its_layer
from polysem.query.records import now, record_verification
from polysem.query.screening import check_thresholds, require_counted_once
from polysem.query.store import Store, as_store
from polysem.util.checks import BATCH_MAX, COUNT_MAX, check_bool, check_int, check_path, check_text
from polysem.util.images import ImageRecord
from polysem.util.results import Result

__all__ = ["UnitVerdict", "Verification", "layer_attributions", "relevant_fraction", "verify"]


@dataclass(frozen=True)
class UnitVerdict(Result):
    """One new channel c'_j of a verified run: the classes it is relevant for and its verdict.

    Args (fields):
        unit: "c1" .. "ck" (c'_j, the channel of concept j).
        relevant_classes: the class ids it is relevant for (Ineq. 2 at the verification's tau and p), ascending.
        min_cosine: the lowest ARV cosine between two of its relevant classes (in [-1, 1]); None when it is
            relevant for fewer than two, or every cosine is NaN (a class reaching it only through the bias).
        own_classes: its relevant classes of concept j.
        other_concept_classes: its relevant classes of another concept of the run.
        unrelated_classes: its relevant classes of no concept of the run.
        serves: relevant for a class of concept j and for none of another concept.
        monosemantic: no two relevant classes with ARV cosine below gamma.
        reason: the verdict in words (why it serves its concept or not, why it is monosemantic or not).
    """

    unit: str
    relevant_classes: list[int]
    min_cosine: float | None
    own_classes: list[int]
    other_concept_classes: list[int]
    unrelated_classes: list[int]
    serves: bool
    monosemantic: bool
    reason: str

    @property
    def ok(self) -> bool:
        """It serves its concept and is monosemantic."""
        return self.serves and self.monosemantic


@dataclass(frozen=True)
class Verification(Result):
    """`verify`'s answer for a run, as recorded in `verifications`.

    Args (fields):
        run_id: the verified run.
        resolved: every c'_j serves its concept and is monosemantic.
        channels: one verdict per new channel, c'_1 .. c'_k in order.
        classes: the train classes checked (those the original channel is relevant for, and the run's
            concept classes), ascending.
        n_images: the train images the disentangled model ran over, all classes together.
        tau, p, gamma: the thresholds it used (Ineq. 2's relevance and fraction, Theorem 3.1's cosine).

    Example:
        >>> checked = polysem.verify(store, run.run_id)
        >>> checked.resolved, [(v.unit, v.relevant_classes) for v in checked.channels]
        (True, [('c1', [281]), ('c2', [938])])
    """

    run_id: str
    resolved: bool
    channels: list[UnitVerdict]
    classes: list[int]
    n_images: int
    tau: float
    p: float
    gamma: float


def layer_attributions(model: nn.Module, layer: nn.Conv2d | nn.Linear, records: list[ImageRecord], transform,
                       logit: int | None, run: ModelPass, positions: str = DEFAULT_POSITIONS) -> np.ndarray:
    """N x C float32: gradient x activation of logit `logit` at `layer`'s output (C units), summed over
    space (a Linear: over the `positions` that count), for each record in order."""
    def attribution(images, targets):
        return attribute_batch(model, layer, images, targets, positions).attribution

    return per_image_attributions(records, transform, logit, attribution, out_channels=layer.weight.shape[0],
                                  run=run.named(f"verify {run.label}"))


def relevant_fraction(attribution: np.ndarray, unit: int, tau: float) -> float:
    """Ineq. 2 for one unit over a class's images (N x C attributions): the fraction of images where the
    unit's attribution reaches tau times the positive sum; an image without positive attribution counts
    as not relevant, as in the screening."""
    total = np.clip(attribution, 0, None).sum(axis=1)
    relevant = (total > 0) & (attribution[:, unit] >= tau * total)
    return float(relevant.mean()) if len(relevant) else 0.0


def verify(store: Store | str | os.PathLike, run_id: str, *, tau: float | None = None, p: float | None = None,
           gamma: float | None = None,
           limit: int | None = None, data_dir=None, device: str = "auto", batch_size: int = 64,
           progress: bool = True) -> Verification:
    """Screen the new channels c'_1..c'_k of a run with the paper's own tests; records the answer in
    `verifications` and returns it.

    Args:
        store: the store, or its folder.
        run_id: a run id from `disentangle` (or `polysem runs`).
        tau, p: Ineq. 2's relevance threshold and fraction of a class's images; None: the run's own (those it
            was made with, `Run.thresholds`), so that the verdict is judged by the run's rules.
        gamma: a new channel relevant for two classes whose ARV cosine is below gamma is polysemantic; None:
            the run's own.
        limit: at most this many train images per class (the first by image id); None for all.
        data_dir: the folder that holds the images now, if they moved since ingest.
        device: "auto", "cpu" or "cuda".
        batch_size: images per forward and backward pass.
        progress: show progress bars.

    Returns:
        A `Verification`: per new channel its relevant classes and verdict, and whether the run resolves
        the channel.

    Example:
        >>> polysem.verify(store, run.run_id, limit=500).resolved
        True
    """
    store = as_store(store)
    check_text("run_id", run_id)
    check_thresholds(TAU if tau is None else tau, P if p is None else p, GAMMA if gamma is None else gamma)
    limit = check_int("limit", limit, 1, COUNT_MAX, none=True, hint=" (images per class); omit it for all images")
    check_path("data_dir", data_dir, none=True)
    check_text("device", device)
    batch_size = check_int("batch_size", batch_size, 1, BATCH_MAX)
    check_bool("progress", progress)
    store.require()
    store, run = run_on_its_layer(store, run_id)
    own_tau, own_p, own_gamma = run.thresholds  # what the run was made with: the default for judging it
    tau, p, gamma = check_thresholds(own_tau if tau is None else tau, own_p if p is None else p,
                                     own_gamma if gamma is None else gamma)
    require_counted_once(store, SCREEN_SPLIT)
    relevant = store.reads.relevant_classes(tau=tau, p=p, split=SCREEN_SPLIT,
                                            channel=run.channel).column("class_id").to_pylist()
    # a forced run's concept classes need not be relevant; they are checked all the same
    classes = sorted(set(relevant) | {c for concept in run.concepts for c in concept})
    logit_of = {r["class_id"]: r["logit"] for r in store.reads.class_list().to_pylist()}

    meta = store.meta()
    model = load_model(store, run_id)
    new_layer = cast(DisentangledLayer, model.get_submodule(meta["layer"]))
    positions = layer_positions(meta["layer_shape"])
    expanded = new_layer.expanded
    units = [f"c{j}" for j in range(1, len(run.concepts) + 1)]
    indices = [new_layer.unit_index(run.channel, unit) for unit in units]
    transform = stored_transform(store, meta).fn
    run_device = resolve_device(device)
    model.to(run_device)

    fractions, n_images = {}, 0
    for class_id in classes:
        rows = store.reads.class_images(split=SCREEN_SPLIT, class_id=class_id, limit=limit or 2**62).to_pylist()
        if not rows:
            continue
        ids = np.array([r["image_id"] for r in rows], dtype=np.int64)
        path = store.path / "cache" / "verify" / run.group_id / SCREEN_SPLIT / f"class-{class_id}.npz"

        def compute(rows=rows, class_id=class_id):
            records = [ImageRecord(r["image_id"], r["path"], r["target"])
                       for r in remap_paths(store, rows, SCREEN_SPLIT, data_dir)]
            return layer_attributions(model, expanded, records, transform, attributed_logit(meta, logit_of[class_id]),
                                      ModelPass(run_device, batch_size, progress, f"class {class_id}"), positions)

        attribution = cached_array(path, ids, "attribution", compute)
        fractions[class_id] = [relevant_fraction(attribution, index, tau) for index in indices]
        n_images += len(ids)

    weights = expanded.weight.detach().cpu().double().flatten(1)
    found: list[dict] = []
    for u, (unit, index) in enumerate(zip(units, indices, strict=True)):
        unit_classes = [c for c in classes if c in fractions and fractions[c][u] >= p]
        cosines = [] if len(unit_classes) < 2 else store.reads.unit_arv_cosines(
            weight=weights[index].tolist(), classes=unit_classes, split=SCREEN_SPLIT
        ).column("cosine").to_pylist()
        finite = [c for c in cosines if c is not None and not math.isnan(c)]
        found.append({"unit": unit, "relevant_classes": unit_classes, "min_cosine": min(finite) if finite else None})
    verdicts = store.reads.verdicts_of(concepts=run.concepts,
                                       relevant_classes=[ch["relevant_classes"] for ch in found],
                                       min_cosines=[ch["min_cosine"] for ch in found], gamma=gamma).to_pylist()
    channels = [UnitVerdict(**unit, **{key: verdict[key] for key in (
                    "own_classes", "other_concept_classes", "unrelated_classes", "serves", "monosemantic", "reason")})
                for unit, verdict in zip(found, verdicts, strict=True)]
    resolved = all(ch.ok for ch in channels)

    with store.transaction() as tx:
        record_verification(tx, {"run_id": run_id, "tau": tau, "p": p, "gamma": gamma, "classes": classes,
                                 "n_images": n_images, "units": units,
                                 "relevant_classes": [ch.relevant_classes for ch in channels],
                                 "min_cosines": [ch.min_cosine for ch in channels], "resolved": resolved,
                                 "verified_at": now()})
    return Verification(run_id, resolved, channels, classes, n_images, tau, p, gamma)
