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

import numpy as np
import torch
from torch import nn

from polysem.constants import EVAL_SPLIT, TAU
from polysem.errors import RunError
from polysem.ingest.attribution import exact_math, layer_probe
from polysem.query.records import now, record_evaluations
from polysem.query.store import Store, as_store
from polysem.util.checks import check_real, check_text
from polysem.util.images import ImageRecord

__all__ = ["SELECTIONS", "WHOLE_TOP", "check_selection", "clamped_attribution_sums", "evaluate_activations", "evaluation_numbers",
           "record_evaluation", "selection_params", "top_class_histograms"]

SELECTIONS = ("ineq2", "authors")
# the whole picture: each unit's WHOLE_TOP most activating val images over every class (`top_classes`)
WHOLE_TOP = 100


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise RunError(f"`selection` must be ineq2 (the paper's Ineq. 2) or authors (the authors' get_results.py, "
                       f"clamped per position), got {selection!r}")


def evaluate_activations(store: Store | str | os.PathLike, run_id: str, *, tau: float = TAU, device: str = "auto",
             selection: str = "ineq2", data_dir: str | os.PathLike | None = None, batch_size: int = 64,
             progress: bool = True) -> dict:
    """Per concept j (1..k): images (relative attribution >= tau, by `selection`), the mean fraction of the
    original activation on each new channel (`fractions`, `frac1`..`frack`) and on r, and `bias_only`; and,
    under `top_classes`, the class histogram of each unit's 100 most activating val images over every class
    (`top_class_histograms`), which shows a unit that fires for classes outside its concept.

    selection: `ineq2` (the paper's Ineq. 2, as screening) or `authors` (clamped per position, as the
    authors' get_results.py; runs the original model over the evaluated images once, then cached).
    Returns {"selection": ..., "concept1": {...}, ..., "top_classes": {...}} and records the concepts'
    numbers in `evaluations`.
    """
    store = as_store(store)
    tau = check_arguments(run_id, tau, device)
    result = evaluation_numbers(store, run_id, tau=tau, device=device, selection=selection, data_dir=data_dir,
                                batch_size=batch_size, progress=progress)
    record_evaluation(store, run_id, tau, result)
    return result


def check_arguments(run_id: str, tau: float, device: str) -> float:
    """`run_id` text, `tau` in [0, 1] (Ineq. 2's threshold), `device` text; returns tau as a float."""
    check_text("run_id", run_id)
    check_text("device", device)
    return check_real("tau", tau, 0, 1)


def evaluation_numbers(store: Store, run_id: str, *, tau: float = TAU, device: str = "auto",
                       selection: str = "ineq2", data_dir: str | os.PathLike | None = None, batch_size: int = 64,
                       progress: bool = True) -> dict:
    """The numbers of `evaluate`, computed in SQL and not recorded."""
    from polysem.ingest.models import resolve_device
    from polysem.method.runs import run_row

    tau = check_arguments(run_id, tau, device)
    store.require()
    check_selection(selection)
    resolve_device(device)  # a bad --device is refused even when no figure needs it
    run = run_row(store, run_id)
    if batch_size < 1:
        raise RunError(f"`batch_size` must be at least 1, got {batch_size}")
    n_val = store.run("split_images", split=EVAL_SPLIT).column("n")[0].as_py()
    if n_val == 0:
        raise RunError(f"the store has no {EVAL_SPLIT} images to evaluate on; ingest them: "
                       f"polysem ingest DATA_DIR --split {EVAL_SPLIT}")
    k = len(run["concepts"])
    params = selection_params(store, run, selection, data_dir=data_dir, device=device, batch_size=batch_size,
                              progress=progress)
    rows = {r["concept"]: r for r in store.run(
        "evaluation_of_run", run_id=run_id, tau=tau, split=EVAL_SPLIT, **params).to_pylist()}
    result: dict = {"selection": selection}
    for j in range(1, k + 1):
        row = rows.get(j, {})
        fractions = row.get("fractions") or [None] * k
        result[f"concept{j}"] = {"n_images": row.get("n_images", 0), "fractions": fractions,
                                 **{f"frac{u}": fractions[u - 1] for u in range(1, k + 1)},
                                 "frac_residual": row.get("frac_residual"), "bias_only": row.get("bias_only")}
    # beside the paper's numbers (concept classes only): which classes each unit fires for over the whole split
    result["top_classes"] = top_class_histograms(store, run_id, WHOLE_TOP, EVAL_SPLIT)
    return result


def selection_params(store: Store, run: dict, selection: str, *, data_dir=None, device: str = "auto",
                     batch_size: int = 64, progress: bool = True) -> dict:
    """The parameters of the SQL blocks `evaluation_of_run` and `selected_activations_of_run` for a selection:
    for `authors`, per val image of the run's concept classes its clamped sum of the run's channel and the
    clamped total over all channels (from the cache, or one model pass per class not cached yet)."""
    check_selection(selection)
    ids: list[int] = []
    channel_sums: list[float] = []
    totals: list[float] = []
    if selection == "authors":
        classes = sorted({c for concept in run["concepts"] for c in concept})
        sums = cached_clamped_sums(store, classes, EVAL_SPLIT, data_dir=data_dir, device=device,
                                   batch_size=batch_size, progress=progress)
        for image_ids, positive in sums:
            ids += image_ids.tolist()
            channel_sums += positive[:, run["channel"]].astype(np.float64).tolist()
            totals += positive.astype(np.float64).sum(axis=1).tolist()
    return {"selection": selection, "image_ids": ids, "channel_sums": channel_sums, "totals": totals}


def cached_clamped_sums(store: Store, classes: list[int], split: str, *, data_dir=None, device: str = "auto",
                        batch_size: int = 64, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (image ids, N x C_l clamped sums `clamped_attribution_sums`) of its stored images of `split`,
    each class computed once with the store's original model, then read from STORE/cache/authors/<split>/."""
    from polysem.ingest.models import resolve_device
    from polysem.method.features import cached_array, class_records
    from polysem.method.runs import base_model

    logit_of = {r["class_id"]: r["logit"] for r in store.run("class_list").to_pylist()}
    loaded: dict = {}

    def model_and_layer():  # loaded only when a class is not cached yet
        if not loaded:
            model, _, layer, transform = base_model(store)
            run_device = resolve_device(device)
            loaded.update(model=model.to(run_device).eval(), layer=layer, transform=transform, device=run_device)
        return loaded

    result = []
    for class_id in classes:
        rows = store.run("class_images", split=split, class_id=class_id, limit=2**62).to_pylist()
        ids = np.array([r["image_id"] for r in rows], dtype=np.int64)
        path = store.path / "cache" / "authors" / split / f"class-{class_id}.npz"

        def compute(rows=rows, class_id=class_id):
            m = model_and_layer()
            records = class_records(store, class_id, split, data_dir, rows)
            return compute_clamped_sums(m["model"], m["layer"], records, m["transform"], logit_of[class_id],
                                        m["device"], batch_size, progress, f"class {class_id}")

        result.append((ids, cached_array(path, ids, "clamped_sums", compute)))
    return result


def clamped_attribution_sums(model: nn.Module, layer: nn.Conv2d, images: torch.Tensor,
                             targets: torch.Tensor) -> torch.Tensor:
    """N x C_l: sum over positions of max(a_hw, 0), a = gradient x activation of each image's target logit
    at `layer`'s output (the authors' get_results.py clamps here, per position, before the spatial sum)."""
    with torch.enable_grad(), exact_math(), layer_probe(layer) as seen:
        logits = model(images)
        if "output" not in seen:
            raise RunError("the layer of interest did not run in the model's forward pass")
        activation = seen["output"]
        (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), activation)
    return (activation.detach() * grad).clamp(min=0).sum(dim=(2, 3))


def compute_clamped_sums(model: nn.Module, layer: nn.Conv2d, records: list[ImageRecord], transform, logit: int,
                         device: torch.device, batch_size: int = 64, progress: bool = True,
                         label: str = "") -> np.ndarray:
    """N x C_l float32 `clamped_attribution_sums` of logit `logit` for each record, in order (tests count calls)."""
    from polysem.method.features import per_image_attributions

    return per_image_attributions(records, transform, logit, device,
                                  lambda images, targets: clamped_attribution_sums(model, layer, images, targets),
                                  out_channels=layer.out_channels, batch_size=batch_size, progress=progress,
                                  label=f"per-position attributions {label}")


def record_evaluation(store: Store, run_id: str, tau: float, result: dict) -> None:
    """Replace the run's rows of `evaluations` with `result` (from `evaluation_numbers`)."""
    evaluated_at = now()
    concepts = sorted(int(key[len("concept"):]) for key in result if key.startswith("concept"))
    rows = [{"concept": j, "tau": tau, "evaluated_at": evaluated_at, "selection": result.get("selection", "ineq2"),
             **{c: result[f"concept{j}"][c] for c in ("n_images", "fractions", "frac_residual", "bias_only")}}
            for j in concepts]
    with store.transaction() as tx:
        record_evaluations(tx, run_id, rows)


def top_class_histograms(store: Store, run_id: str, n: int = WHOLE_TOP, split: str = EVAL_SPLIT) -> dict:
    """The class histogram of each unit's (original, c1..ck) `n` most activating images of `split` over every
    class (`unit_class_histogram`; all of the split's images when it has fewer than n), as plain data:
    {"split", "n", "n_images" (the split's), "units": {unit: [{class_id, name, concept, n_images, share}]}},
    most frequent class first; concept is the run's concept of the class (1..k) or None."""
    if n < 1:
        raise RunError(f"`n` (the top images per unit) must be at least 1, got {n}")
    units: dict[str, list[dict]] = {}
    for row in store.run("top_classes_of_run", run_id=run_id, limit=n, split=split).to_pylist():
        units.setdefault(row.pop("unit"), []).append(row)
    n_images = store.run("split_images", split=split).column("n")[0].as_py()
    return {"split": split, "n": n, "n_images": n_images, "units": units}
