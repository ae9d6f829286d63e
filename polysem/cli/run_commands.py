"""Commands on disentanglement runs: disentangle, evaluate, verify, runs, visualize, report."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from polysem.cli.app import (
    DEFAULT_STORE,
    POption,
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
    render_evaluation,
    render_record,
    render_runs,
    render_verification,
    render_visualization,
)
from polysem.constants import GAMMA, TAU, P
from polysem.errors import PolysemError


def _split_values(values: list[str] | None) -> list[str]:
    """`--concept1 530 --concept1 531` and `--concept1 530,531` mean the same."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _rho(text: str) -> str | float:
    """--rho as the library takes it: "auto" or a number."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise PolysemError(f"bad --rho '{text}': use auto or a number in (0, 1]") from None


@command()
def disentangle(
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
    data: Annotated[Path | None, typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    force: Annotated[bool, typer.Option(help="Proceed when the channel is not relevant for a concept class, or a fixed --rho leaves a concept without sources.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch for feature maps and the check.")] = 64,
    again: Annotated[bool, typer.Option(help="With --from-screen: run again even when an identical run exists (by default its id is returned).")] = False,
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Split a channel into one channel per concept plus a residual; the model's outputs stay the same.

    The run (split, rho, check) is recorded in the store's `runs` table and the model in its artifacts.
    """
    _check_format(fmt, ("table", "json"))
    import warnings

    from polysem.method.runs import check_candidate_options, disentangle_candidates, disentangle_channels

    target = _store(store, trust_code)
    options: dict[str, Any] = {"rho": _rho(rho), "objective": objective, "data_dir": data, "force": force,
                               "device": device, "batch_size": batch_size, "tau": tau, "p": p}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if from_screen:
            check_candidate_options(take=limit, progress=True, **options)  # before the screening records anything
            runs = disentangle_candidates(target, _screen_candidates(target, channel, concept1, concept2, concept,
                                                                     tau=tau, p=p, gamma=gamma),
                                          take=limit, again=again, **options)
        else:
            if again:
                raise PolysemError("--again is for --from-screen, which looks for an identical run; a run of named "
                                   "channels is always made anew")
            runs = disentangle_channels(target, [_named_request(channel, concept1, concept2, concept, limit, gamma)],
                                        **options)
    for warning in caught:
        typer.echo(f"Warning: {as_flags(str(warning.message))}", err=True)
    _print_runs(runs, fmt, target.path)


def _screen_candidates(target, channel: int | None, concept1: list[str] | None, concept2: list[str] | None,
                       concept: list[str] | None, *, tau: float, p: float, gamma: float) -> list:
    """`--from-screen`: every candidate of the screening, best first (`disentangle_candidates` takes --limit)."""
    from polysem.method.runs import requests_from_screen

    if channel is not None or concept1 or concept2 or concept:
        raise PolysemError("--from-screen picks channels and concepts itself; drop --channel and the concepts")
    return requests_from_screen(target, tau=tau, p=p, gamma=gamma)


def _named_request(channel: int | None, concept1: list[str] | None, concept2: list[str] | None,
                   concept: list[str] | None, limit: int, gamma: float):
    """The one channel and the concepts named on the command line."""
    from polysem.method.runs import ChannelRequest

    if limit != 1 or gamma != GAMMA:
        raise PolysemError("--limit and --gamma choose channels for --from-screen; drop them when you name "
                           "--channel and its concepts")
    if concept and (concept1 or concept2):
        raise PolysemError("give --concept once per concept, or --concept1 and --concept2, not both")
    concepts = ([_split_values([c]) for c in concept] if concept
                else [_split_values(concept1), _split_values(concept2)])
    if channel is None or len(concepts) < 2 or not all(concepts):
        raise PolysemError("give --channel and two or more concepts (--concept1 and --concept2, or --concept "
                           "repeated), or --from-screen")
    return ChannelRequest(channel, concepts)


def _print_runs(runs: list, fmt: str, store_path: Path) -> None:
    if fmt == "json":
        rows = [json.loads(json.dumps(run, default=str)) for run in runs]
        typer.echo(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    for run in runs:
        concepts_text = " / ".join(",".join(map(str, c)) for c in run["concepts"])
        sources_text = " / ".join(str(len(s)) for s in run["sources"])
        typer.echo(
            f"run {run['run_id']}: channel {run['channel']}, concepts {concepts_text}, "
            f"rho {run['rho']} ({run['objective']}), sources {sources_text} / {len(run['shared'])} shared, "
            f"max |logit change| {run['max_logit_diff']:.2g} "
            f"on {run['parameters']['check_images']} images -> {store_path / run['artifact']}"
        )
        for message in run["warnings"]:
            typer.echo(f"Warning: {message}", err=True)


class Selection(str, Enum):
    """How `evaluate` selects its val images (a closed set: the help lists them, the parser refuses others)."""

    ineq2 = "ineq2"
    authors = "authors"


@command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="Run id from `polysem disentangle` or `polysem runs`.")],
    tau: TauOption = TAU,
    plots: Annotated[str | None, typer.Option(metavar="FOLDER", help="Write the density, panel, top-image and visualisation figures into this folder.")] = None,
    data: Annotated[Path | None, typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for the plots).")] = "auto",
    figure_format: Annotated[str, typer.Option(help="png, svg or pdf for the --plots.")] = "png",
    selection: Annotated[Selection, typer.Option(help="Which val images are evaluated: ineq2 (the paper's Ineq. 2, as screening) or authors (the authors' get_results.py: attribution clamped per position; one model pass over the images, then cached).")] = Selection.ineq2,
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """How much of each concept's activation moved to c'1 and c'2, on the val split (recorded in `evaluations`)."""
    _check_format(fmt, ("table", "json"))
    from polysem.reporting import evaluate as run_evaluate

    if plots is None and figure_format != "png":
        raise PolysemError("--figure-format is the format of the --plots figures; add --plots FOLDER or drop it")
    result = run_evaluate(_store(store, trust_code), run_id, tau=tau, plots_dir=plots, data_dir=data, device=device,
                          figure_format=figure_format, selection=selection.value, progress=fmt == "table")
    if fmt == "json":
        typer.echo(json.dumps(result))
        return
    target = _store(store)
    concepts = target.run("run_concepts", run_id=run_id).column("concepts")[0].as_py()
    render_evaluation(result, concepts, _class_names(target),
                      f"run {run_id}: fraction of the original activation (val, tau={tau}, selection "
                      f"{selection.value})")
    for path in result.get("plots", []):
        typer.echo(f"plot -> {path}")


@command()
def verify(
    run_id: Annotated[str, typer.Argument(help="Run id from `polysem disentangle` or `polysem runs`.")],
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="A new channel relevant for two classes whose ARV cosine is below gamma is still polysemantic.")] = GAMMA,
    limit: Annotated[int | None, typer.Option(help="At most N train images per class (the first by image id); default all.")] = None,
    data: Annotated[Path | None, typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward/backward pass.")] = 64,
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Screen the new channels of a run: does each serve its concept only, and is it monosemantic? (recorded in `verifications`)"""
    _check_format(fmt, ("table", "json"))
    from polysem.method.verification import verify as run_verify

    result = run_verify(_store(store, trust_code), run_id, tau=tau, p=p, gamma=gamma, limit=limit, data_dir=data, device=device,
                        batch_size=batch_size, progress=fmt == "table")
    if fmt == "json":
        typer.echo(json.dumps({k: result[k] for k in ("run_id", "resolved", "channels", "classes", "n_images")}
                              | {"tau": tau, "p": p, "gamma": gamma}))
        return
    render_verification(result, f"run {run_id}: new channels on {result['n_images']} train images of classes "
                                f"{', '.join(map(str, result['classes']))} (tau={tau}, p={p})")
    if result["resolved"]:
        typer.echo(f"run {run_id}: resolved (every new channel serves its concept and is monosemantic at "
                   f"gamma={gamma})")
    else:
        failing = [f"{c['unit']}: {c['reason']}" for c in result["channels"] if not (c["serves"] and c["monosemantic"])]
        typer.echo(f"run {run_id}: not resolved: {'; '.join(failing)}")


@command()
def runs(
    run_id: Annotated[str | None, typer.Argument(help="Show this run's full record instead of the list.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json; csv and json hold every column.")] = "table",
    store: StoreOption = DEFAULT_STORE,
):
    """Every disentanglement run with its evaluation (the paper's quantitative table), or one run in full."""
    _check_format(fmt)
    target = _store(store)
    if run_id is None:
        render_runs(target.run("run_summaries"), fmt, _class_names(target))
        return
    record = target.run("run_record", run_id=run_id).to_pylist()
    if not record:
        raise PolysemError(f"unknown run id '{run_id}'; `polysem runs` lists them")
    render_record(record[0], fmt, _class_names(target))


def _class_names(target) -> dict[int, str]:
    return target.class_names()


class Method(str, Enum):
    """Feature visualisation parameterisations (a closed set: the help lists them, the parser refuses others)."""

    maco = "maco"
    fourier = "fourier"


@command()
def visualize(
    run_id: Annotated[str | None, typer.Argument(help="Run id from `polysem runs`; or give --channel instead.")] = None,
    channel: Annotated[int | None, typer.Option(help="A channel of the stored model (instead of a RUN_ID).")] = None,
    method: Annotated[Method, typer.Option(help="maco (phase only, the store's own magnitude spectrum) or fourier (Lucid).")] = Method.maco,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 512,
    size: Annotated[int, typer.Option(help="Side of the optimised images in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same images on one device.")] = 0,
    seeds: Annotated[str | None, typer.Option(metavar="S,S,...", help="Several seeds in one call, e.g. 0,1,2 "
                                              "(instead of --seed): recorded per seed, drawn side by side.")] = None,
    data: Annotated[Path | None, typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fmt: TableJsonOption = "table",
    trust_code: TrustOption = None,
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

    seed_list = None
    if seeds is not None:
        if seed != 0:
            raise PolysemError("give --seed or --seeds, not both (--seeds lists every seed to run)")
        parts = [part.strip() for part in seeds.split(",")]
        if not all(part.lstrip("-").isdigit() for part in parts):
            raise PolysemError(f"bad --seeds '{seeds}': give whole numbers separated by commas, e.g. 0,1,2")
        seed_list = [int(part) for part in parts]
    result = run_visualize(_store(store, trust_code), run_id, channel=channel, method=method.value, steps=steps, size=size,
                           seed=seed, seeds=seed_list, device=device, data_dir=data)
    if fmt == "json":
        typer.echo(json.dumps(result))
        return
    per_seed = result if isinstance(result, list) else [result]
    first = next(iter(per_seed[0].values()))
    shown = ", ".join(str(next(iter(r.values()))["seed"]) for r in per_seed)
    render_visualization(per_seed, f"{run_id or f'channel {channel}'}: {first['method']}, {first['steps']} steps, "
                                   f"{first['size']} px, seed{'s' if len(per_seed) > 1 else ''} {shown}, "
                                   f"{sum(next(iter(r.values()))['seconds'] for r in per_seed):.1f} s on {first['device']}")
    import textwrap

    for v in (v for r in per_seed for v in r.values() if v["failed"]):  # an entry per unit and seed, 100 columns
        seed_text = f"(seed {v['seed']}) " if len(per_seed) > 1 else ""
        print(textwrap.fill(f"failed: {seed_text}{as_flags(v['reason'])}", 100, subsequent_indent="  "))


@command()
def report(
    out: Annotated[str, typer.Option(metavar="FOLDER", help="Folder for index.html and its images.")] = "polysem-report",
    data: Annotated[Path | None, typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for the panels).")] = "auto",
    figure_format: Annotated[str, typer.Option(help="png or svg for the page's figures.")] = "png",
    trust_code: TrustOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """A self-contained static page of the store (index.html plus images) to open in a browser or share."""
    from polysem.reporting import write_report

    index = write_report(_store(store, trust_code), out, data_dir=data, device=device, figure_format=figure_format)
    typer.echo(f"report -> {index}")
