"""Commands on disentanglement runs: disentangle, evaluate, verify, runs, visualize, report."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from polysem.cli.app import (
    DEFAULT_STORE,
    DataOption,
    DeviceOption,
    LayerOption,
    POption,
    RunTauOption,
    StoreOption,
    TableJsonOption,
    TauOption,
    TrustOption,
    _check_format,
    _store,
    as_flags,
    command,
)
from polysem.cli.printing import (
    print_thresholds,
    render_disentangled,
    render_evaluation,
    render_record,
    render_runs,
    render_verification,
    render_visualization,
)
from polysem.constants import GAMMA, TAU, P
from polysem.util.parsing import rho_value, split_values, whole_numbers


@command()
def disentangle(
    *,
    channel: Annotated[int | None, typer.Option(help="Channel of the layer of interest to split.")] = None,
    concept1: Annotated[list[str] | None, typer.Option(help="Class id or name of concept 1; repeat or use commas for several.")] = None,
    concept2: Annotated[list[str] | None, typer.Option(help="Class id or name of concept 2; repeat or use commas for several.")] = None,
    concept: Annotated[list[str] | None, typer.Option(help="One concept's classes, comma-separated; repeat once per concept (k >= 2) instead of --concept1/--concept2.")] = None,
    rho: Annotated[str, typer.Option(help="auto (Eq. 6 over 0.05..1.00) or a value in (0, 1].")] = "auto",
    objective: Annotated[str, typer.Option(help="Eq. 6 with |.| (abs, the paper) or max(.,0) + 1e-5 (positive, reference code).")] = "abs",
    from_screen: Annotated[bool, typer.Option(help="Take the --limit channels of `polysem screen --concepts` with the lowest between-concept cosine, each with all its concepts.")] = False,
    limit: Annotated[int, typer.Option(help="With --from-screen: how many channels to disentangle into one model.")] = 1,
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="With --from-screen: the complete-linkage threshold that groups classes into concepts.")] = GAMMA,
    data: DataOption = None,
    force: Annotated[bool, typer.Option(help="Proceed when the channel is not relevant for a concept class, or a fixed --rho leaves a concept without sources.")] = False,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch for feature maps and the check.")] = 64,
    again: Annotated[bool, typer.Option(help="With --from-screen: run again even when an identical run exists (by default its id is returned).")] = False,
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Split a channel into one channel per concept plus a residual; the model's outputs stay the same.

    The run (split, rho, check) is recorded in the store's `runs` table and the model in its artifacts.
    """
    _check_format(fmt, ("table", "json"))
    import warnings

    from polysem.method.runs import RunSettings, disentangle_runs

    target = _store(store, trust_code, layer)
    settings = RunSettings(rho=rho_value(rho), objective=objective, data_dir=data, force=force, device=device,
                           batch_size=batch_size, tau=tau, p=p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = disentangle_runs(target, channel=channel, concept1=split_values(concept1),
                                concept2=split_values(concept2),
                                concepts=[split_values([c]) for c in concept] if concept else None,
                                from_screen=from_screen, take=limit, gamma=gamma, again=again, settings=settings)
    for warning in caught:
        typer.echo(f"Warning: {as_flags(str(warning.message))}", err=True)
    render_disentangled(runs, fmt, target.path)


class Selection(str, Enum):
    """How `evaluate` selects its val images (a closed set: the help lists them, the parser refuses others)."""

    ineq2 = "ineq2"
    authors = "authors"


@command()
def evaluate(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="Run id from `polysem disentangle` or `polysem runs`.")],
    *,
    tau: RunTauOption = None,
    plots: Annotated[str | None, typer.Option(metavar="FOLDER", help="Write the density, panel, top-image and visualisation figures into this folder.")] = None,
    data: DataOption = None,
    device: DeviceOption = "auto",
    figure_format: Annotated[str, typer.Option(help="png, svg or pdf for the --plots.")] = "png",
    selection: Annotated[Selection, typer.Option(help="Which val images are evaluated: ineq2 (the paper's Ineq. 2, as screening) or authors (the authors' get_results.py: attribution clamped per position; one model pass over the images, then cached).")] = Selection.ineq2,
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """How much of each concept's activation moved to c'1 and c'2, on the val split (recorded in `evaluations`)."""
    _check_format(fmt, ("table", "json"))
    from polysem.reporting import evaluate as run_evaluate

    target = _store(store, trust_code, layer)
    result = run_evaluate(target, run_id, tau=tau, plots_dir=plots, data_dir=data, device=device,
                          figure_format=figure_format, selection=selection.value, progress=fmt == "table")
    render_evaluation(result, fmt, target.class_names())
    if fmt == "table":
        print_thresholds(("tau",), (tau,), (result.tau,))


@command()
def verify(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="Run id from `polysem disentangle` or `polysem runs`.")],
    *,
    tau: RunTauOption = None,
    p: Annotated[float | None, typer.Option("--p", help="Ineq. 2: fraction of a class's images for which the channel must be relevant. [default: the run's own]")] = None,
    gamma: Annotated[float | None, typer.Option(help="A new channel relevant for two classes whose ARV cosine is below gamma is still polysemantic. [default: the run's own]")] = None,
    limit: Annotated[int | None, typer.Option(help="At most N train images per class (the first by image id); default all.")] = None,
    data: DataOption = None,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward/backward pass.")] = 64,
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Screen the new channels of a run: does each serve its concept only, and is it monosemantic? (recorded in `verifications`)"""
    _check_format(fmt, ("table", "json"))
    from polysem.method.verification import verify as run_verify

    result = run_verify(_store(store, trust_code, layer), run_id, tau=tau, p=p, gamma=gamma, limit=limit, data_dir=data,
                        device=device, batch_size=batch_size, progress=fmt == "table")
    render_verification(result, fmt)
    if fmt == "table":
        print_thresholds(("tau", "p", "gamma"), (tau, p, gamma), (result.tau, result.p, result.gamma))


@command()
def runs(
    run_id: Annotated[str | None, typer.Argument(metavar="RUN_ID", help="Show this run's full record instead of the list.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json; csv and json hold every column.")] = "table",
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Every disentanglement run with its evaluation (the paper's quantitative table), or one run in full."""
    _check_format(fmt)
    from polysem.query.run_records import run_record
    from polysem.query.run_records import runs as run_table

    target = _store(store, layer=layer)
    if run_id is None:
        render_runs(run_table(target), fmt, _class_names(target))
        return
    render_record(run_record(target, run_id), fmt, _class_names(target))


def _class_names(target) -> dict[int, str]:
    return target.class_names()


class Method(str, Enum):
    """Feature visualisation parameterisations (a closed set: the help lists them, the parser refuses others)."""

    maco = "maco"
    fourier = "fourier"


@command()
def visualize(
    run_id: Annotated[str | None, typer.Argument(metavar="RUN_ID", help="Run id from `polysem runs`; or give --channel instead.")] = None,
    *,
    channel: Annotated[int | None, typer.Option(help="A channel of the stored model (instead of a RUN_ID).")] = None,
    method: Annotated[Method, typer.Option(help="maco (phase only, the store's own magnitude spectrum) or fourier (Lucid).")] = Method.maco,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 512,
    size: Annotated[int | None, typer.Option(help="Side of the optimised images in pixels. [default: the side of the store's images after its transform, the model's input]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same images on one device.")] = 0,
    seeds: Annotated[str | None, typer.Option(metavar="S,S,...", help="Several seeds in one call, e.g. 0,1,2 "
                                              "(instead of --seed): recorded per seed, drawn side by side.")] = None,
    data: DataOption = None,
    device: DeviceOption = "auto",
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Feature visualisations of the original channel, c'1, c'2 and r of a run, in one batch.

    Each image maximises one unit's spatially summed activation; every unit's activation on every
    image is recorded in the store's `visualizations` table, the PNGs under its artifacts. A unit
    that never activated is restarted from a store image; if it still fails it is reported failed
    with the reason, and no picture is recorded for it.
    """
    _check_format(fmt, ("table", "json"))
    from polysem.method.visualize import visualize as run_visualize

    result = run_visualize(_store(store, trust_code, layer), run_id, channel=channel, method=method.value, steps=steps,
                           size=size, seed=seed, seeds=whole_numbers("seeds", seeds), device=device, data_dir=data)
    render_visualization(result, fmt, run_id or f"channel {channel}")


@command()
def report(
    *,
    out: Annotated[str, typer.Option(metavar="FOLDER", help="Folder for index.html and its images.")] = "polysem-report",
    data: DataOption = None,
    device: DeviceOption = "auto",
    figure_format: Annotated[str, typer.Option(help="png or svg for the page's figures.")] = "png",
    tau: Annotated[float | None, typer.Option(help="The screening section's Ineq. 2 threshold. [default: the latest run's, else the paper's]")] = None,
    p: Annotated[float | None, typer.Option("--p", help="The screening section's Ineq. 2 fraction. [default: the latest run's, else the paper's]")] = None,
    gamma: Annotated[float | None, typer.Option(help="The screening section's cosine threshold. [default: the latest run's, else the paper's]")] = None,
    trust_code: TrustOption = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """A self-contained static page of the store (index.html plus images) to open in a browser or share."""
    from polysem.method.figure_data import screening_thresholds
    from polysem.reporting import write_report

    target = _store(store, trust_code, layer)
    index = write_report(target, out, data_dir=data, device=device, tau=tau, p=p, gamma=gamma,
                         figure_format=figure_format)
    (used_tau, used_p, used_gamma), source = screening_thresholds(target, (tau, p, gamma))
    typer.echo(f"report -> {index}")
    typer.echo(f"screening section at tau {used_tau}, p {used_p}, gamma {used_gamma} ({source} thresholds)")
