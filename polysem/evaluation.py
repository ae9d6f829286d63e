"""Evaluation of a disentanglement run (METHOD.md section 7), recorded in `evaluations`.

The quantitative part is SQL (`sql/evaluation.sql`): the spatially summed
activations of c'_1..c'_k and r are linear in the stored input sums, so no model
runs. Only the plots of the most activating images run the model, on 16 images.
Everything is computed (plots into a staging folder) before anything is recorded
or placed, so a failure leaves the store and the plot folder as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from polysem.constants import EVAL_SPLIT, TAU
from polysem.disentangling import run_row
from polysem.errors import RunError
from polysem.query.store import Store, as_store


def evaluate(store: Store | str | os.PathLike, run_id: str, tau: float = TAU, plots_dir: str | os.PathLike | None = None,
             data_dir: str | os.PathLike | None = None, device: str = "auto") -> dict:
    """Per concept j (1..k): images (relative attribution >= tau), the mean fraction of the original
    activation on each new channel (`fractions`, `frac1`..`frack`) and on r, and `bias_only`.

    Returns {"concept1": {...}, ..., "plots": [paths]} and records the numbers.
    """
    store = as_store(store)
    store.require()
    if plots_dir is not None:
        store.check_outside(plots_dir, folder=True)
    from polysem.ingest.models import resolve_device

    resolve_device(device)  # a bad --device is refused even when no figure needs it
    run = run_row(store, run_id)
    if not 0 <= tau <= 1:
        raise RunError(f"--tau must be in [0, 1], got {tau}")
    n_val = store.query("SELECT count(*) AS n FROM samples WHERE split = ?", [EVAL_SPLIT]).column("n")[0].as_py()
    if n_val == 0:
        raise RunError(f"the store has no {EVAL_SPLIT} images to evaluate on; ingest them: "
                       f"polysem ingest DATA_DIR --split {EVAL_SPLIT}")
    k = len(run["concepts"])
    rows = {r["concept"]: r for r in store.query(
        "SELECT * FROM evaluation_summary(?, tau := ?, split_name := ?)", [run_id, tau, EVAL_SPLIT]).to_pylist()}
    result = {}
    for j in range(1, k + 1):
        row = rows.get(j, {})
        fractions = row.get("fractions") or [None] * k
        result[f"concept{j}"] = {"n_images": row.get("n_images", 0), "fractions": fractions,
                                 **{f"frac{u}": fractions[u - 1] for u in range(1, k + 1)},
                                 "frac_residual": row.get("frac_residual"), "bias_only": row.get("bias_only")}

    staging = None
    try:
        if plots_dir is not None:
            from polysem.panel import run_figures

            plots_dir = Path(plots_dir)
            plots_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".polysem-plots-", dir=plots_dir))
            activations = store.query("SELECT * FROM run_activations(?, split_name := ?)",
                                      [run_id, EVAL_SPLIT]).to_pylist()
            figures = run_figures(store, run, activations, tau, staging, data_dir, device)
            drawn = [path for paths in figures.values() for path in paths]
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        with store.connect(write=True) as conn:
            conn.execute("BEGIN")
            conn.execute("DELETE FROM evaluations WHERE run_id = ?", [run_id])
            for j in range(1, k + 1):
                values = result[f"concept{j}"]
                conn.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [run_id, j, tau, values["n_images"], values["fractions"], values["frac_residual"],
                              values["bias_only"], now])
            conn.execute("COMMIT")
        if staging is not None:  # recorded: now the figures take their places
            result["plots"] = []
            for path in drawn:
                os.replace(path, plots_dir / path.name)
                result["plots"].append(str(plots_dir / path.name))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return result
