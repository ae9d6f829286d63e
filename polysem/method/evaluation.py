"""Evaluation of a disentanglement run (docs/method.md section 7), recorded in `evaluations`.

The quantitative part is SQL (`sql/evaluation.sql`): the spatially summed
activations of c'_1..c'_k and r are linear in the stored input sums, so no model
runs. The plots of the most activating images (`polysem.reporting.evaluate`) run the model.
"""

from __future__ import annotations

import os

from polysem.constants import EVAL_SPLIT, TAU
from polysem.errors import RunError
from polysem.query.records import now, record_evaluations
from polysem.query.store import Store, as_store
from polysem.util.checks import check_real, check_text

__all__ = ["WHOLE_TOP", "evaluate", "evaluation_numbers", "record_evaluation", "top_class_histograms"]

# the whole picture: each unit's WHOLE_TOP most activating val images over every class (`top_classes`)
WHOLE_TOP = 100


def evaluate(store: Store | str | os.PathLike, run_id: str, *, tau: float = TAU, device: str = "auto") -> dict:
    """Per concept j (1..k): images (relative attribution >= tau), the mean fraction of the original
    activation on each new channel (`fractions`, `frac1`..`frack`) and on r, and `bias_only`; and, under
    `top_classes`, the class histogram of each unit's 100 most activating val images over every class
    (`top_class_histograms`), which shows a unit that fires for classes outside its concept.

    Returns {"concept1": {...}, ..., "top_classes": {...}} and records the concepts' numbers in `evaluations`.
    """
    store = as_store(store)
    tau = check_arguments(run_id, tau, device)
    result = evaluation_numbers(store, run_id, tau=tau, device=device)
    record_evaluation(store, run_id, tau, result)
    return result


def check_arguments(run_id: str, tau: float, device: str) -> float:
    """`run_id` text, `tau` in [0, 1] (Ineq. 2's threshold), `device` text; returns tau as a float."""
    check_text("run_id", run_id)
    check_text("device", device)
    return check_real("tau", tau, 0, 1)


def evaluation_numbers(store: Store, run_id: str, *, tau: float = TAU, device: str = "auto") -> dict:
    """The numbers of `evaluate`, computed in SQL and not recorded."""
    from polysem.ingest.models import resolve_device
    from polysem.method.runs import run_row

    tau = check_arguments(run_id, tau, device)
    store.require()
    resolve_device(device)  # a bad --device is refused even when no figure needs it
    run = run_row(store, run_id)
    n_val = store.run("split_images", split=EVAL_SPLIT).column("n")[0].as_py()
    if n_val == 0:
        raise RunError(f"the store has no {EVAL_SPLIT} images to evaluate on; ingest them: "
                       f"polysem ingest DATA_DIR --split {EVAL_SPLIT}")
    k = len(run["concepts"])
    rows = {r["concept"]: r for r in store.run(
        "evaluation_of_run", run_id=run_id, tau=tau, split=EVAL_SPLIT).to_pylist()}
    result = {}
    for j in range(1, k + 1):
        row = rows.get(j, {})
        fractions = row.get("fractions") or [None] * k
        result[f"concept{j}"] = {"n_images": row.get("n_images", 0), "fractions": fractions,
                                 **{f"frac{u}": fractions[u - 1] for u in range(1, k + 1)},
                                 "frac_residual": row.get("frac_residual"), "bias_only": row.get("bias_only")}
    # beside the paper's numbers (concept classes only): which classes each unit fires for over the whole split
    result["top_classes"] = top_class_histograms(store, run_id, WHOLE_TOP, EVAL_SPLIT)
    return result


def record_evaluation(store: Store, run_id: str, tau: float, result: dict) -> None:
    """Replace the run's rows of `evaluations` with `result` (from `evaluation_numbers`)."""
    evaluated_at = now()
    concepts = sorted(int(key[len("concept"):]) for key in result if key.startswith("concept"))
    rows = [{"concept": j, "tau": tau, "evaluated_at": evaluated_at,
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
