"""Evaluation of a disentanglement run (METHOD.md section 7), recorded in `evaluations`.

The quantitative part is SQL (`sql/evaluation.sql`): the spatially summed
activations of c'1, c'2 and r are linear in the stored input sums, so no model
runs. Only the plots of the most activating images run the model, on 16 images.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from polysem.constants import EVAL_SPLIT, TAU
from polysem.disentangling import run_row
from polysem.errors import RunError
from polysem.query.store import Store

FIELDS = ("n_images", "frac1", "frac2", "frac_residual")


def evaluate(store: Store | str | os.PathLike, run_id: str, tau: float = TAU, plots_dir: str | os.PathLike | None = None,
             data_dir: str | os.PathLike | None = None, device: str = "auto") -> dict:
    """Per concept: images (relative attribution >= tau) and mean fractions of the activation on c'1, c'2, r.

    Returns {"concept1": {...}, "concept2": {...}, "plots": [paths]} and records the numbers.
    """
    store = store if isinstance(store, Store) else Store(store)
    store.require()
    run = run_row(store, run_id)
    if not 0 <= tau <= 1:
        raise RunError(f"tau must be in [0, 1], got {tau}")
    n_val = store.query("SELECT count(*) AS n FROM samples WHERE split = ?", [EVAL_SPLIT]).column("n")[0].as_py()
    if n_val == 0:
        raise RunError(f"the store has no {EVAL_SPLIT} images to evaluate on; ingest them: "
                       f"polysem ingest DATA_DIR --split {EVAL_SPLIT}")
    rows = {r["concept"]: r for r in store.query(
        "SELECT * FROM evaluation_summary(?, tau := ?, split_name := ?)", [run_id, tau, EVAL_SPLIT]).to_pylist()}
    result = {f"concept{k}": {f: rows.get(k, {}).get(f, 0 if f == "n_images" else None) for f in FIELDS} for k in (1, 2)}
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with store.connect(write=True) as conn:
        conn.execute("BEGIN")
        for k in (1, 2):
            values = result[f"concept{k}"]
            conn.execute("INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [run_id, k, tau, values["n_images"], values["frac1"], values["frac2"], values["frac_residual"], now])
        conn.execute("COMMIT")
    if plots_dir is not None:
        from polysem.panel import run_figures

        activations = store.query("SELECT * FROM run_activations(?, split_name := ?)", [run_id, EVAL_SPLIT]).to_pylist()
        figures = run_figures(store, run, activations, tau, Path(plots_dir), data_dir, device)
        result["plots"] = [str(p) for paths in figures.values() for p in paths]
    return result
