"""Gathering a store's data through the method layer and handing it to the figures: the report
page, `evaluate` with its plots and the WordNet scatter. The face: the CLI and notebooks call these."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from polysem.constants import EVAL_SPLIT, GAMMA, TAU, P
from polysem.errors import PolysemError
from polysem.figures import page, plots
from polysem.query.screening import check_thresholds
from polysem.query.store import Store, as_store
from polysem.util import atomic
from polysem.util.checks import check_bool, check_path, check_text
from polysem.util.results import Result

if TYPE_CHECKING:
    from polysem.method.evaluation import Evaluation
# the method layer (torch) is imported where a function needs it: `polysem plot wordnet` starts without torch

__all__ = ["REPORT_FORMATS", "WordnetFigure", "evaluate", "plot_wordnet", "write_report"]

REPORT_FORMATS = ("png", "svg")  # what a browser shows in an <img>


def write_report(store: Store | str | os.PathLike, out: str | os.PathLike = "polysem-report", *,
                 data_dir: str | os.PathLike | None = None, device: str = "auto", tau: float | None = None,
                 p: float | None = None, gamma: float | None = None, figure_format: str = "png") -> Path:
    """Write OUT/index.html and OUT/img/*.png; returns the path of index.html. OUT may be an existing
    folder (an earlier report is replaced); nothing in it changes unless the whole report is made.

    `tau`, `p`, `gamma`: the thresholds of the page's screening section; each one not given is the store's
    latest run's (the paper's when the store has no run), and the page says which it used. Each run's own
    section is drawn at that run's thresholds."""
    store = as_store(store)
    check_path("out", out)
    check_path("data_dir", data_dir, none=True)
    check_text("device", device)
    check_thresholds(TAU if tau is None else tau, P if p is None else p, GAMMA if gamma is None else gamma)
    check_text("figure_format", figure_format)
    if figure_format not in REPORT_FORMATS:
        raise PolysemError(f"`figure_format` of a report must be one of {', '.join(REPORT_FORMATS)} (what a browser "
                           f"shows in a page), got {figure_format!r}")
    store = as_store(store)
    store.require()
    target = store.check_outside(out, folder=True)
    assert target is not None  # None only for standard output, which a folder never is
    for name, kind in (("img", "folder"), ("index.html", "file")):  # what the report replaces or writes into
        entry = target / name
        if entry.is_symlink() or (entry.exists() and not (entry.is_dir() if kind == "folder" else entry.is_file())):
            raise PolysemError(f"`out` {target} holds {name}, which is {'a link' if entry.is_symlink() else 'no ' + kind}"
                               f"; a report writes its {'images into' if kind == 'folder' else 'page as'} a plain "
                               f"{kind} there: remove {entry} or choose another `out`")
    from polysem.method.figure_data import report_data

    data = report_data(store, data_dir, device, given=(tau, p, gamma))
    # a failure to write names the report folder, not its hidden staging folder or the files in it
    with atomic.writing(target, into_folder=True):
        target.mkdir(parents=True, exist_ok=True)
        # built in a staging folder beside, then moved into place: a failure leaves the last report as it was
        staging = Path(tempfile.mkdtemp(prefix=".polysem-report-", dir=target))
        try:
            return _publish(page.write_page(data, staging, data.thresholds[0], figure_format), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class WordnetFigure(Result):
    """The WordNet scatter that `plot_wordnet` wrote.

    Args (fields):
        path: the figure file, absolute.
        points: the points drawn, one per (channel, class pair) sharing the channel.
        pairs: the distinct class pairs among them.
    """

    path: Path
    points: int
    pairs: int


def plot_wordnet(store: Store | str | os.PathLike, out: str | os.PathLike = "wordnet.png", *, tau: float = TAU,
                 p: float = P, gamma: float = GAMMA, figure_format: str | None = None) -> WordnetFigure:
    """Draw WordNet path similarity over ARV cosine for every class pair sharing a relevant channel
    (supplement Fig. 4) into the file `out`; `polysem wordnet` must have run.

    Args:
        store: the store, or its folder.
        out: the figure file, named .png, .svg or .pdf (outside the store).
        tau, p: Ineq. 2's relevance threshold and fraction that decide which channels a class pair shares.
        gamma: where the dashed line of Theorem 3.1's cosine threshold is drawn.
        figure_format: png, svg or pdf; it must agree with the suffix of `out`. None: the suffix's.

    Returns:
        A `WordnetFigure`: the file written and the points and class pairs drawn.

    Example:
        >>> drawn = plot_wordnet(store, "plots/wordnet.svg")
        >>> drawn.path.name, drawn.points >= drawn.pairs
        ('wordnet.svg', True)
    """
    from polysem.method.wordnet import similarity_points

    store = as_store(store)
    tau, p, gamma = check_thresholds(tau, p, gamma)
    check_text("figure_format", figure_format, none=True)
    path = store.check_outside(out)
    assert path is not None  # None only for standard output, which check_outside refuses here
    fmt = _figure_format(path, figure_format)
    points = similarity_points(store, tau, p)
    drawn = plots.wordnet_scatter(points, path, tau, p, gamma, figure_format=fmt)
    return WordnetFigure(drawn, len(points), len({(c1, c2) for _, _, c1, c2 in points}))


def _figure_format(out: Path, figure_format: str | None) -> str:
    """`figure_format`, else the suffix of `out`; a suffix that names another figure format is refused."""
    suffix = out.suffix.lower().lstrip(".")
    if figure_format is not None and figure_format not in plots.FIGURE_FORMATS:
        raise PolysemError(f"`figure_format` must be one of {', '.join(plots.FIGURE_FORMATS)}, got '{figure_format}'")
    if suffix not in plots.FIGURE_FORMATS:
        raise PolysemError(f"`out` {out}: name a .png, .svg or .pdf file (the figure is written to exactly that path)")
    if figure_format is not None and suffix != figure_format:
        raise PolysemError(f"`out` {out} names a .{suffix} file but `figure_format` is {figure_format}; make them "
                           "agree")
    return suffix


def _publish(staging: Path, target: Path) -> Path:
    """Move the staged images, then the page, into the report folder; returns the page's path. The images go
    into `img` as opened without following a link (one put there while the figures were drawn is refused), and
    only when no entry they would replace is other than a file."""
    img = target / "img"
    img.mkdir(exist_ok=True)
    try:
        folder = os.open(img, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise PolysemError(f"`out` {target} holds img, which is a link or no folder ({error.strerror}); a report "
                           f"writes its images into a plain folder there: remove {img} or choose another `out`") from None
    try:
        images = sorted((staging / "img").iterdir())
        for image in images:
            try:
                there = os.stat(image.name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(there.st_mode):
                raise PolysemError(f"`out` {target} holds {img / image.name}, which is no file; the report writes "
                                   f"that image there: remove it or choose another `out`")
        for image in images:
            os.replace(image, image.name, dst_dir_fd=folder)
    finally:
        os.close(folder)
    os.replace(staging / "index.html", target / "index.html")
    return target / "index.html"


def evaluate(store: Store | str | os.PathLike, run_id: str, *, tau: float | None = None,
             plots_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
             device: str = "auto", figure_format: str = "png", selection: str = "ineq2",
             progress: bool = True) -> Evaluation:
    """How much of each concept's activation moved to its own new channel, on the val split; recorded in
    `evaluations` (`polysem.method.evaluation.evaluate_activations`), with the run's figures written into
    `plots_dir` when given.

    The figures are drawn into a staging folder before the numbers are recorded and placed only
    after, so a failure leaves the store and the plot folder as they were.

    Args:
        store: the store, or its folder.
        run_id: a run id from `disentangle` (or `polysem runs`).
        tau: Ineq. 2's relevance threshold that selects a concept's val images, in [0, 1]; None: the tau the
            run was made with (`Run.thresholds`).
        plots_dir: write the density, panel, top-image and visualisation figures into this folder.
        data_dir: the folder that holds the images now, if they moved since ingest (for the figures).
        device: "auto", "cpu" or "cuda" (the figures, and the `authors` selection, run the model).
        figure_format: png, svg or pdf, the format of the figures (only with `plots_dir`).
        selection: `ineq2` (the paper's Ineq. 2, default) or `authors` (the authors' get_results.py: clamped
            per position; runs the original model over the evaluated images once, then cached). The
            densities are drawn over the images the selection chose.
        progress: show progress bars.

    Returns:
        An `Evaluation`: per concept the selected images and the fractions of the original activation on
        c'_1 .. c'_k and on r; `plots` lists the figure files written.

    Example:
        >>> result = polysem.evaluate(store, run.run_id, plots_dir="plots")
        >>> result.per_concept[0].fractions, len(result.plots)
        ([0.93, 0.02], 6)
    """
    from polysem.method import evaluation
    from polysem.method.figure_data import run_figure_data
    from polysem.method.runs import run_on_its_layer

    store = as_store(store)
    tau = evaluation.check_arguments(run_id, tau, device)
    check_path("plots_dir", plots_dir, none=True)
    check_path("data_dir", data_dir, none=True)
    check_text("figure_format", figure_format)
    check_text("selection", selection)
    evaluation.check_selection(selection)
    check_bool("progress", progress)
    if plots_dir is None and figure_format != "png":
        raise PolysemError("`figure_format` is the format of the `plots_dir` figures; add `plots_dir`=FOLDER or "
                           "drop it")
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
    made = [missing for missing in (plots_dir, *plots_dir.parents) if not missing.exists()]  # removed on a failure
    with atomic.writing(plots_dir, into_folder=True):
        plots_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".polysem-plots-", dir=plots_dir))
    written: list[str] = []
    try:
        store, run = run_on_its_layer(store, run_id)
        params = evaluation.selection_params(store, run, selection, data_dir=data_dir, device=device,
                                             progress=progress)  # cached by evaluation_numbers
        activations = store.reads.selected_activations_of_run(run_id=run_id, split=EVAL_SPLIT, **params).to_pylist()
        figure_data = run_figure_data(store, run.to_dict(), activations, data_dir, device)
        with atomic.writing(plots_dir, into_folder=True):
            figures = plots.run_figures(figure_data, result.tau, staging, figure_format)
        evaluation.record_evaluation(store, result)
        with atomic.writing(plots_dir, into_folder=True):
            for path in (path for paths in figures.values() for path in paths):
                os.replace(path, plots_dir / path.name)
                written.append(str(plots_dir / path.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not written:  # nothing placed: the folders this call made go too (rmdir leaves a folder that is not empty)
            for missing in made:
                with contextlib.suppress(OSError):
                    missing.rmdir()
    return dataclasses.replace(result, plots=written)
