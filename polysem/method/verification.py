"""Checking a disentanglement run with the screening itself (`polysem verify`), recorded in `verifications`.

A split resolves a polysemantic channel when each new channel c'_j serves one concept. The
check applies the paper's own tests to the new channels:

- relevance (Ineq. 2): the disentangled model runs over the train images of every class the
  original channel was relevant for (and the run's concept classes); gradient x activation of
  the image's class logit is taken at the output of the new layer's `expanded` conv, and c'_j is
  relevant for an image when its attribution is >= tau times the positive sum over *all* units
  of `expanded` (the new layer's channels: the untouched ones, c'_1..c'_k and r of every split
  channel of the model); relevant for a class when that holds for at least p of its images.
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
from typing import cast

import numpy as np
import torch
from torch import nn

from polysem.constants import GAMMA, SCREEN_SPLIT, TAU, P
from polysem.ingest.attribution import attribute_batch
from polysem.ingest.models import resolve_device, stored_transform
from polysem.method.disentangling import DisentangledConv
from polysem.method.features import cached_array, per_image_attributions, remap_paths
from polysem.method.runs import load_model, run_row
from polysem.query.records import now, record_verification
from polysem.query.screening import check_thresholds, require_counted_once
from polysem.query.store import Store, as_store
from polysem.util.checks import BATCH_MAX, COUNT_MAX, check_bool, check_int, check_path, check_text
from polysem.util.images import ImageRecord

__all__ = ["layer_attributions", "relevant_fraction", "verify"]


def layer_attributions(model: nn.Module, layer: nn.Conv2d, records: list[ImageRecord], transform, logit: int,
                       device: torch.device, batch_size: int = 64, progress: bool = True,
                       label: str = "") -> np.ndarray:
    """N x C float32: gradient x activation of logit `logit` at `layer`'s output (C channels), summed over
    space, for each record in order."""
    return per_image_attributions(records, transform, logit, device,
                                  lambda images, targets: attribute_batch(model, layer, images, targets).attribution,
                                  out_channels=layer.out_channels, batch_size=batch_size, progress=progress,
                                  label=f"verify {label}")


def relevant_fraction(attribution: np.ndarray, unit: int, tau: float) -> float:
    """Ineq. 2 for one unit over a class's images (N x C attributions): the fraction of images where the
    unit's attribution reaches tau times the positive sum; an image without positive attribution counts
    as not relevant, as in the screening."""
    total = np.clip(attribution, 0, None).sum(axis=1)
    relevant = (total > 0) & (attribution[:, unit] >= tau * total)
    return float(relevant.mean()) if len(relevant) else 0.0


def verify(store: Store | str | os.PathLike, run_id: str, *, tau: float = TAU, p: float = P, gamma: float = GAMMA,
           limit: int | None = None, data_dir=None, device: str = "auto", batch_size: int = 64,
           progress: bool = True) -> dict:
    """Screen the new channels c'_1..c'_k of a run; returns and records {"run_id", "resolved", "channels":
    [{"unit", "relevant_classes", "own_classes", "other_concept_classes", "unrelated_classes", "min_cosine",
    "serves", "monosemantic", "reason"}, ...], "classes", "n_images"}.

    limit: at most this many train images per class (the first by image id); None for all.
    """
    store = as_store(store)
    check_text("run_id", run_id)
    tau, p, gamma = check_thresholds(tau, p, gamma)
    limit = check_int("limit", limit, 1, COUNT_MAX, none=True, hint=" (images per class); omit it for all images")
    check_path("data_dir", data_dir, none=True)
    check_text("device", device)
    batch_size = check_int("batch_size", batch_size, 1, BATCH_MAX)
    check_bool("progress", progress)
    store.require()
    run = run_row(store, run_id)
    require_counted_once(store, SCREEN_SPLIT)
    relevant = store.run("relevant_classes", tau=tau, p=p, split=SCREEN_SPLIT,
                         channel=run["channel"]).column("class_id").to_pylist()
    # a forced run's concept classes need not be relevant; they are checked all the same
    classes = sorted(set(relevant) | {c for concept in run["concepts"] for c in concept})
    logit_of = {r["class_id"]: r["logit"] for r in store.run("class_list").to_pylist()}

    meta = store.meta()
    model = load_model(store, run_id)
    new_layer = cast(DisentangledConv, model.get_submodule(meta["layer"]))
    expanded = new_layer.expanded
    units = [f"c{j}" for j in range(1, len(run["concepts"]) + 1)]
    indices = [new_layer.unit_index(run["channel"], unit) for unit in units]
    transform = stored_transform(store, meta).fn
    run_device = resolve_device(device)
    model.to(run_device)

    fractions, n_images = {}, 0
    for class_id in classes:
        rows = store.run("class_images", split=SCREEN_SPLIT, class_id=class_id, limit=limit or 2**62).to_pylist()
        if not rows:
            continue
        ids = np.array([r["image_id"] for r in rows], dtype=np.int64)
        path = store.path / "cache" / "verify" / run["group_id"] / SCREEN_SPLIT / f"class-{class_id}.npz"

        def compute(rows=rows, class_id=class_id):
            records = [ImageRecord(r["image_id"], r["path"], r["target"])
                       for r in remap_paths(store, rows, SCREEN_SPLIT, data_dir)]
            return layer_attributions(model, expanded, records, transform, logit_of[class_id], run_device,
                                      batch_size, progress, f"class {class_id}")

        attribution = cached_array(path, ids, "attribution", compute)
        fractions[class_id] = [relevant_fraction(attribution, index, tau) for index in indices]
        n_images += len(ids)

    weights = expanded.weight.detach().cpu().double().flatten(1)
    channels: list[dict] = []
    for u, (unit, index) in enumerate(zip(units, indices, strict=True)):
        unit_classes = [c for c in classes if c in fractions and fractions[c][u] >= p]
        cosines = [] if len(unit_classes) < 2 else store.run(
            "unit_arv_cosines", weight=weights[index].tolist(), classes=unit_classes, split=SCREEN_SPLIT
        ).column("cosine").to_pylist()
        finite = [c for c in cosines if c is not None and not math.isnan(c)]
        channels.append({"unit": unit, "relevant_classes": unit_classes, "min_cosine": min(finite) if finite else None})
    verdicts = store.run("verdicts_of", concepts=run["concepts"],
                         relevant_classes=[ch["relevant_classes"] for ch in channels],
                         min_cosines=[ch["min_cosine"] for ch in channels], gamma=gamma).to_pylist()
    for channel, verdict in zip(channels, verdicts, strict=True):
        channel.update({key: verdict[key] for key in ("own_classes", "other_concept_classes", "unrelated_classes",
                                                       "serves", "monosemantic", "reason")})
    resolved = all(ch["serves"] and ch["monosemantic"] for ch in channels)

    with store.transaction() as tx:
        record_verification(tx, {"run_id": run_id, "tau": tau, "p": p, "gamma": gamma, "classes": classes,
                                 "n_images": n_images, "units": units,
                                 "relevant_classes": [ch["relevant_classes"] for ch in channels],
                                 "min_cosines": [ch["min_cosine"] for ch in channels], "resolved": resolved,
                                 "verified_at": now()})
    return {"run_id": run_id, "resolved": resolved, "channels": channels, "classes": classes, "n_images": n_images}
