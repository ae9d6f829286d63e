"""Gathering a store's data through the method layer and handing it to the figures: the report
page and `evaluate` with its plots. The face: the CLI and notebooks call these."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from polysem.constants import EVAL_SPLIT, TAU
from polysem.errors import PolysemError
from polysem.figures import page, plots
from polysem.method import evaluation
from polysem.method.figure_data import report_data, run_figure_data
from polysem.method.runs import run_row
from polysem.query.store import Store, as_store
from polysem.util import atomic
from polysem.util.checks import check_bool, check_path, check_real, check_text

__all__ = ["REPORT_FORMATS", "evaluate", "write_report"]

REPORT_FORMATS = ("png", "svg")  # what a browser shows in an <img>


def write_report(store: Store | str | os.PathLike, out: str | os.PathLike = "polysem-report", *,
                 data_dir: str | os.PathLike | None = None, device: str = "auto", tau: float = TAU,
                 figure_format: str = "png") -> Path:
    """Write OUT/index.html and OUT/img/*.png; returns the path of index.html. OUT may be an existing
    folder (an earlier report is replaced); nothing in it changes unless the whole report is made."""
    store = as_store(store)
    check_path("out", out)
    check_path("data_dir", data_dir, none=True)
    check_text("device", device)
    tau = check_real("tau", tau, 0, 1)
    check_text("figure_format", figure_format)
    if figure_format not in REPORT_FORMATS:
        raise PolysemError(f"`figure_format` of a report must be one of {', '.join(REPORT_FORMATS)} (what a browser "
                           f"shows in a page), got {figure_format!r}")
    store = as_store(store)
    store.require()
    target = store.check_outside(out, folder=True)
    assert target is not None  # None only for standard output, which a folder never is
    data = report_data(store, data_dir, device)
    # a failure to write names the report folder, not its hidden staging folder or the files in it
    with atomic.writing(target, into_folder=True):
        target.mkdir(parents=True, exist_ok=True)
        # built in a staging folder beside, then moved into place: a failure leaves the last report as it was
        staging = Path(tempfile.mkdtemp(prefix=".polysem-report-", dir=target))
        try:
            return _publish(page.write_page(data, staging, tau, figure_format), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path) -> Path:
    """Move the staged images, then the page, into the report folder; returns the page's path."""
    (target / "img").mkdir(exist_ok=True)
    for image in (staging / "img").iterdir():
        os.replace(image, target / "img" / image.name)
    os.replace(staging / "index.html", target / "index.html")
    return target / "index.html"


def evaluate(store: Store | str | os.PathLike, run_id: str, *, tau: float = TAU,
             plots_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
             device: str = "auto", figure_format: str = "png", selection: str = "ineq2",
             progress: bool = True) -> dict:
    """`polysem.method.evaluation.evaluate_activations`, with the run's figures written into `plots_dir` when given.

    selection: `ineq2` (the paper's Ineq. 2, default) or `authors` (the authors' get_results.py: clamped
    per position; runs the original model over the evaluated images once, then cached). The densities
    are drawn over the images the selection chose.
    The figures are drawn into a staging folder before the numbers are recorded and placed only
    after, so a failure leaves the store and the plot folder as they were.
    """
    store = as_store(store)
    tau = evaluation.check_arguments(run_id, tau, device)
    check_path("plots_dir", plots_dir, none=True)
    check_path("data_dir", data_dir, none=True)
    check_text("figure_format", figure_format)
    check_text("selection", selection)
    evaluation.check_selection(selection)
    check_bool("progress", progress)
    if plots_dir is None:
        return evaluation.evaluate_activations(store, run_id, tau=tau, device=device, selection=selection, data_dir=data_dir,
                                   progress=progress)
    if figure_format not in plots.FIGURE_FORMATS:
        raise PolysemError(f"`figure_format` must be one of {', '.join(plots.FIGURE_FORMATS)}, got {figure_format!r}")
    evaluation.check_selection(selection)
    store.require()
    folder = store.check_outside(plots_dir, folder=True, name="plots_dir")
    assert folder is not None  # None only for standard output, which a folder never is
    result = evaluation.evaluation_numbers(store, run_id, tau=tau, device=device, selection=selection,
                                           data_dir=data_dir, progress=progress)
    plots_dir = folder
    # failures to write name the plot folder, not its hidden staging folder; the store's own are not in these blocks
    with atomic.writing(plots_dir, into_folder=True):
        plots_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".polysem-plots-", dir=plots_dir))
    try:
        run = run_row(store, run_id)
        params = evaluation.selection_params(store, run, selection, data_dir=data_dir, device=device,
                                             progress=progress)  # cached by evaluation_numbers
        activations = store.run("selected_activations_of_run", run_id=run_id, split=EVAL_SPLIT, **params).to_pylist()
        figure_data = run_figure_data(store, run, activations, data_dir, device)
        with atomic.writing(plots_dir, into_folder=True):
            figures = plots.run_figures(figure_data, tau, staging, figure_format)
        evaluation.record_evaluation(store, run_id, tau, result)
        result["plots"] = []
        with atomic.writing(plots_dir, into_folder=True):
            for path in (path for paths in figures.values() for path in paths):
                os.replace(path, plots_dir / path.name)
                result["plots"].append(str(plots_dir / path.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
