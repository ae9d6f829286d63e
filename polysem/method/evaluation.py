"""Evaluation of a disentanglement run (docs/method.md section 7), recorded in `evaluations`.

The quantitative part is SQL (`sql/evaluation_macros.sql`): the spatially summed
activations of c'_1..c'_k and r are linear in the stored input sums, so no model
runs. The plots of the most activating images (`polysem.reporting.evaluate`) run the model.

Which val images are evaluated (`selection`):

- `ineq2` (default): the paper's Ineq. 2, as the screening uses it: the original channel's
  spatially summed attribution A_c over sum_c' max(A_c', 0), from the stored attributions.
- `authors`: as the authors' get_results.py: the attribution is clamped per position before
  the spatial sum, sum_hw max(a_hw,c, 0) / sum_{c', hw} max(a_hw,c', 0). The store keeps only
  spatial sums, so this runs the original model over the val images of the run's concept
  classes once; the per-channel clamped sums are cached per class in
  STORE/cache/authors/<split>/class-<id>.npz (any run on the same classes reuses them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from polysem.constants import EVAL_SPLIT
from polysem.errors import RunError
from polysem.ingest.attribution import exact_math, layer_probe
from polysem.ingest.units import DEFAULT_POSITIONS, layer_positions, unit_sums
from polysem.method.features import ModelPass, attributed_logit
from polysem.query.records import now, record_evaluations
from polysem.query.store import Store, as_store
from polysem.util.checks import check_real, check_text
from polysem.util.images import ImageRecord
from polysem.util.results import Result

if TYPE_CHECKING:
    from polysem.method.runs import Run

__all__ = ["SELECTIONS", "WHOLE_TOP", "ConceptEvaluation", "Evaluation", "TopClasses", "check_selection", "clamped_attribution_sums", "evaluate_activations", "evaluation_numbers",
           "record_evaluation", "selection_params", "top_class_histograms"]

SELECTIONS = ("ineq2", "authors")
# the whole picture: each unit's WHOLE_TOP most activating val images over every class (`top_classes`)
WHOLE_TOP = 100


@dataclass(frozen=True)
class ConceptEvaluation(Result):
    """One concept j of an evaluated run: where its activation went (docs/method.md section 7).

    Args (fields):
        n_images: the val images of concept j's classes selected (relative attribution of the original channel
            >= tau, by the evaluation's `selection`).
        fractions: k numbers, the mean fraction of the original channel's activation that c'_1 .. c'_k carry on
            those images (1 on c'_j and 0 elsewhere is a clean split); None each when no image was selected.
        frac_residual: the mean fraction on r, the residual (enters with the factor -(k - 1)); None likewise.
        bias_only: the original channel carries only its bias on every selected image (its fractions then
            say nothing about the split); None when no image was selected.

    Returns (of `to_dict()`): the fields and, after `fractions`, `frac1` .. `frack` (its items one by one).
    """

    n_images: int
    fractions: list[float | None]
    frac_residual: float | None
    bias_only: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "fractions": list(self.fractions),
                **{f"frac{u}": f for u, f in enumerate(self.fractions, start=1)},
                "frac_residual": self.frac_residual, "bias_only": self.bias_only}


@dataclass(frozen=True)
class TopClasses(Result):
    """Which classes each unit of a run fires for over a whole split: the class histogram of the unit's `n`
    most activating images (`top_class_histograms`).

    Args (fields):
        split: the split the images are from ("val").
        n: the top images per unit (all of the split's images when it has fewer).
        n_images: the split's images.
        units: per unit ("original", "c1" .. "ck"), its classes, most frequent first, each a dict of class_id,
            name, concept (the run's concept of the class, 1..k, or None), n_images (of the unit's top n) and
            share (n_images / n, in [0, 1]).
    """

    split: str
    n: int
    n_images: int
    units: dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class Evaluation(Result):
    """`evaluate`'s answer for a run: per concept the fractions of the original activation on each new
    channel and on r, over the val images the selection chose; recorded in `evaluations`.

    Args (fields):
        run_id: the evaluated run.
        tau: Ineq. 2's relevance threshold that selected the images.
        selection: "ineq2" (the paper's Ineq. 2, as screening) or "authors" (clamped per position).
        concepts: the run's k concepts, each a list of class ids (as `Run.concepts`).
        per_concept: k evaluations, concept 1 .. k in order (a k x (k + 1) table with the residual).
        top_classes: the class histogram of each unit's top images over the whole split.
        plots: the figure files written (with `plots_dir`), else None.
        why_empty: why no image was evaluated (every concept's n_images is 0), else None.

    Returns (of `to_dict()`): the JSON of `polysem evaluate --format json`: selection, concept1 .. conceptk
    (`ConceptEvaluation.to_dict()`), top_classes, and plots when there are plots.

    Example:
        >>> result = polysem.evaluate(store, run.run_id)
        >>> [(c.n_images, c.fractions) for c in result.per_concept]
        [(50, [0.93, 0.02]), (50, [0.01, 0.96])]
    """

    run_id: str
    tau: float
    selection: str
    concepts: list[list[int]]
    per_concept: list[ConceptEvaluation]
    top_classes: TopClasses
    plots: list[str] | None = None
    why_empty: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"selection": self.selection,
                **{f"concept{j}": c.to_dict() for j, c in enumerate(self.per_concept, start=1)},
                "top_classes": self.top_classes.to_dict(), **({} if self.plots is None else {"plots": self.plots}),
                **({} if self.why_empty is None else {"why_empty": self.why_empty})}

    def _repr_markdown_(self) -> str:
        """What a notebook shows: the fractions per concept, or why nothing was evaluated."""
        if self.why_empty:
            return f"**No images evaluated** (run {self.run_id}, tau {self.tau}): {self.why_empty}"
        rows = "\n".join(f"| concept {j} | {c.n_images} | {', '.join('-' if f is None else f'{f:.3f}' for f in c.fractions)} |"
                         for j, c in enumerate(self.per_concept, start=1))
        return f"run {self.run_id}, tau {self.tau}\n\n| | images | fractions on c'1..c'k |\n|---|---|---|\n{rows}"


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise RunError(f"`selection` must be ineq2 (the paper's Ineq. 2) or authors (the authors' get_results.py, "
                       f"clamped per position), got {selection!r}")


def evaluate_activations(store: Store | str | os.PathLike, run_id: str, *, tau: float | None = None,
                         device: str = "auto",
             selection: str = "ineq2", data_dir: str | os.PathLike | None = None, batch_size: int = 64,
             progress: bool = True) -> Evaluation:
    """Per concept j (1..k): images (relative attribution >= tau, by `selection`), the mean fraction of the
    original activation on each new channel and on r, and `bias_only`; and, under `top_classes`, the class
    histogram of each unit's 100 most activating val images over every class (`top_class_histograms`), which
    shows a unit that fires for classes outside its concept. Records the concepts' numbers in `evaluations`.

    selection: `ineq2` (the paper's Ineq. 2, as screening) or `authors` (clamped per position, as the
    authors' get_results.py; runs the original model over the evaluated images once, then cached).
    """
    store = as_store(store)
    tau = check_arguments(run_id, tau, device)
    result = evaluation_numbers(store, run_id, tau=tau, device=device, selection=selection, data_dir=data_dir,
                                batch_size=batch_size, progress=progress)
    record_evaluation(store, result)
    return result


def check_arguments(run_id: str, tau: float | None, device: str) -> float | None:
    """`run_id` text, `tau` in [0, 1] (Ineq. 2's threshold) or None (the run's own), `device` text; returns tau
    as a float, or None."""
    check_text("run_id", run_id)
    check_text("device", device)
    return None if tau is None else check_real("tau", tau, 0, 1)


def evaluation_numbers(store: Store, run_id: str, *, tau: float | None = None, device: str = "auto",
                       selection: str = "ineq2", data_dir: str | os.PathLike | None = None, batch_size: int = 64,
                       progress: bool = True) -> Evaluation:
    """The numbers of `evaluate`, computed in SQL and not recorded."""
    from polysem.ingest.models import resolve_device
    from polysem.method.runs import run_on_its_layer

    tau = check_arguments(run_id, tau, device)
    store.require()
    check_selection(selection)
    resolve_device(device)  # a bad --device is refused even when no figure needs it
    store, run = run_on_its_layer(store, run_id)
    if tau is None:
        tau = run.thresholds[0]  # the tau the run was made with
    if batch_size < 1:
        raise RunError(f"`batch_size` must be at least 1, got {batch_size}")
    n_val = store.reads.split_images(split=EVAL_SPLIT)
    if n_val == 0:
        several = len(store.meta(any_layer=True).get("layers") or {}) > 1
        of_layer = f" of layer {run.layer}" if several and run.layer else ""
        raise RunError(f"the store has no {EVAL_SPLIT} images{of_layer} to evaluate on; ingest them: "
                       f"polysem ingest DATA_DIR --split {EVAL_SPLIT}" + (f" --layer {run.layer}" if of_layer else ""))
    k = len(run.concepts)
    params = selection_params(store, run, selection, data_dir=data_dir, device=device, batch_size=batch_size,
                              progress=progress)
    rows = {r["concept"]: r for r in store.reads.evaluation_of_run(
        run_id=run_id, tau=tau, split=EVAL_SPLIT, **params).to_pylist()}
    per_concept = []
    for j in range(1, k + 1):
        row = rows.get(j, {})
        per_concept.append(ConceptEvaluation(row.get("n_images", 0), row.get("fractions") or [None] * k,
                                             row.get("frac_residual"), row.get("bias_only")))
    why_empty = None
    if all(concept.n_images == 0 for concept in per_concept):
        why_empty = (f"no {EVAL_SPLIT} image of the concepts' classes has a relative attribution >= tau {tau} on "
                     f"channel {run.channel} (selection {selection}), so there is nothing to average: lower `tau` "
                     f"(the run was made at tau {run.thresholds[0]}), or ingest more {EVAL_SPLIT} images of its "
                     "classes")
    # beside the paper's numbers (concept classes only): which classes each unit fires for over the whole split
    return Evaluation(run_id, tau, selection, run.concepts, per_concept,
                      top_class_histograms(store, run_id, WHOLE_TOP, EVAL_SPLIT), why_empty=why_empty)


def selection_params(store: Store, run: Run, selection: str, *, data_dir=None, device: str = "auto",
                     batch_size: int = 64, progress: bool = True) -> dict:
    """The parameters of the SQL blocks `evaluation_of_run` and `selected_activations_of_run` for a selection:
    for `authors`, per val image of the run's concept classes its clamped sum of the run's channel and the
    clamped total over all channels (from the cache, or one model pass per class not cached yet)."""
    check_selection(selection)
    ids: list[int] = []
    channel_sums: list[float] = []
    totals: list[float] = []
    if selection == "authors":
        classes = sorted({c for concept in run.concepts for c in concept})
        sums = cached_clamped_sums(store, classes, EVAL_SPLIT, data_dir=data_dir, device=device,
                                   batch_size=batch_size, progress=progress)
        for image_ids, positive in sums:
            ids += image_ids.tolist()
            channel_sums += positive[:, run.channel].astype(np.float64).tolist()
            totals += positive.astype(np.float64).sum(axis=1).tolist()
    return {"selection": selection, "image_ids": ids, "channel_sums": channel_sums, "totals": totals}


def cached_clamped_sums(store: Store, classes: list[int], split: str, *, data_dir=None, device: str = "auto",
                        batch_size: int = 64, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (image ids, N x C_l clamped sums `clamped_attribution_sums`) of its stored images of `split`,
    each class computed once with the store's original model, then read from STORE/cache/authors/<split>/."""
    from polysem.ingest.models import resolve_device
    from polysem.method.features import cached_array, class_records
    from polysem.method.runs import base_model

    logit_of = {r["class_id"]: r["logit"] for r in store.reads.class_list().to_pylist()}
    loaded: dict = {}

    def model_and_layer():  # loaded only when a class is not cached yet
        if not loaded:
            model, _, layer, transform = base_model(store)
            run_device = resolve_device(device)
            loaded.update(model=model.to(run_device).eval(), layer=layer, transform=transform, device=run_device,
                          positions=layer_positions(store.meta()["layer_shape"]))
        return loaded

    result = []
    for class_id in classes:
        rows = store.reads.class_images(split=split, class_id=class_id, limit=2**62).to_pylist()
        ids = np.array([r["image_id"] for r in rows], dtype=np.int64)
        path = store.path / "cache" / "authors" / split / f"class-{class_id}.npz"

        def compute(rows=rows, class_id=class_id):
            m = model_and_layer()
            records = class_records(store, class_id, split, data_dir, rows)
            return compute_clamped_sums(m["model"], m["layer"], records, m["transform"],
                                        attributed_logit(store.meta(), logit_of[class_id]),
                                        ModelPass(m["device"], batch_size, progress, f"class {class_id}"),
                                        positions=m["positions"])

        result.append((ids, cached_array(path, ids, "clamped_sums", compute)))
    return result


def clamped_attribution_sums(model: nn.Module, layer: nn.Conv2d | nn.Linear, images: torch.Tensor,
                             targets: torch.Tensor | None, positions: str = DEFAULT_POSITIONS) -> torch.Tensor:
    """N x C_l: sum over positions of max(a_hw, 0), a = gradient x activation of each image's target logit
    at `layer`'s output (the authors' get_results.py clamps here, per position, before the spatial sum); a
    Linear sums over the `positions` that count (`polysem.ingest.units`)."""
    with torch.enable_grad(), exact_math(), layer_probe(layer) as seen:
        logits = model(images)
        if "output" not in seen:
            raise RunError("the layer of interest did not run in the model's forward pass")
        activation = seen["output"]
        if targets is None:  # a store made with --target predicted: each image's argmax logit
            targets = logits.detach().argmax(1)
        (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), activation)
    return unit_sums((activation.detach() * grad).clamp(min=0), layer, positions)


def compute_clamped_sums(model: nn.Module, layer: nn.Conv2d | nn.Linear, records: list[ImageRecord], transform,
                         logit: int | None, run: ModelPass, *, positions: str = DEFAULT_POSITIONS) -> np.ndarray:
    """N x C_l float32 `clamped_attribution_sums` of logit `logit` for each record, in order (tests count calls)."""
    from polysem.method.features import per_image_attributions

    def clamped(images, targets):
        return clamped_attribution_sums(model, layer, images, targets, positions)

    return per_image_attributions(records, transform, logit, clamped, out_channels=layer.weight.shape[0],
                                  run=run.named(f"per-position attributions {run.label}"))


def record_evaluation(store: Store, result: Evaluation) -> None:
    """Replace the run's rows of `evaluations` with `result` (from `evaluation_numbers`)."""
    evaluated_at = now()
    rows = [{"concept": j, "tau": result.tau, "evaluated_at": evaluated_at, "selection": result.selection,
             "n_images": c.n_images, "fractions": c.fractions, "frac_residual": c.frac_residual,
             "bias_only": c.bias_only}
            for j, c in enumerate(result.per_concept, start=1)]
    with store.transaction() as tx:
        record_evaluations(tx, result.run_id, rows)


def top_class_histograms(store: Store, run_id: str, n: int = WHOLE_TOP, split: str = EVAL_SPLIT) -> TopClasses:
    """The class histogram of each unit's (original, c1..ck) `n` most activating images of `split` over every
    class (`unit_class_histogram`; all of the split's images when it has fewer than n): `TopClasses`, each
    unit's classes most frequent first."""
    if n < 1:
        raise RunError(f"`n` (the top images per unit) must be at least 1, got {n}")
    units: dict[str, list[dict]] = {}
    for row in store.reads.top_classes_of_run(run_id=run_id, limit=n, split=split).to_pylist():
        units.setdefault(row.pop("unit"), []).append(row)
    n_images = store.reads.split_images(split=split)
    return TopClasses(split, n, n_images, units)
