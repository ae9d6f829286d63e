"""The `polysem` command line: parses options, calls the library, prints results.

Every command is thin: the work lives in `ingest`, `query` and `polysem.*`
functions that a notebook can call the same way.
"""

from __future__ import annotations

import functools
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from polysem.constants import GAMMA, P, TAU
from polysem.errors import PolysemError
from polysem.output import (render, render_concepts, render_evaluation, render_record, render_runs, render_screen,
                            render_verification)

app = typer.Typer(
    name="polysem",
    help="Find and disentangle polysemantic CNN channels from attributions kept in a DuckDB store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plot_app = typer.Typer(help="Figures from the store.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from polysem import __version__

        typer.echo(f"polysem {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    """Find and disentangle polysemantic CNN channels from attributions kept in a DuckDB store."""
app.add_typer(plot_app, name="plot")

StoreOption = Annotated[
    Path,
    typer.Option("--store", envvar="POLYSEM_STORE", help="Store directory (or set POLYSEM_STORE).", show_default=True),
]
FormatOption = Annotated[str, typer.Option("--format", help="Output format: table, csv or json.")]
TableJsonOption = Annotated[str, typer.Option("--format", help="Output format: table or json.")]
DEFAULT_STORE = Path("polysem-store")


def command(group: typer.Typer = app, name: str | None = None):
    """Register a command whose library errors become one `Error: ...` line and exit code 2."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                typer.echo("Interrupted: what was complete is stored; run the same command again to resume.", err=True)
                raise typer.Exit(130) from None
            except (typer.Exit, typer.Abort):
                raise
            except Exception as error:
                if os.environ.get(DEBUG_ENV) and not isinstance(error, PolysemError):
                    raise
                typer.echo(f"Error: {error_line(error)}", err=True)
                raise typer.Exit(2) from None

        return group.command(name=name)(wrapper)

    return decorate


DEBUG_ENV = "POLYSEM_DEBUG"


def error_line(error: Exception) -> str:
    """One line for any failure: a library error says problem and fix; anything else (DuckDB, torch,
    the OS) is named by its type, with a pointer to the traceback."""
    if isinstance(error, PolysemError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    text = str(error).strip()
    first = text.splitlines()[0] if text else "(no message)"
    return f"{type(error).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)"


def _store(path: Path):
    from polysem.query import Store

    return Store(path)


def _check_format(fmt: str, allowed=("table", "csv", "json")) -> None:
    if fmt not in allowed:
        raise PolysemError(f"unknown --format '{fmt}'; use one of {', '.join(allowed)}")


def _class_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PolysemError(f"bad --classes '{text}': give class ids separated by commas, e.g. 0,5,17") from None


@command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(help="Folder holding one ImageFolder tree per split (DATA_DIR/SPLIT/CLASS/IMAGE).")],
    split: Annotated[str, typer.Option(help="Split folder to ingest (train, val, ...).")] = "train",
    model: Annotated[Optional[str], typer.Option(help="torchvision model name or package.module:callable. [default: resnet50, or the store's]")] = None,
    weights: Annotated[Optional[str], typer.Option(help="imagenet, random[:SEED] or a state_dict path. [default: imagenet / the callable's own]")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Dotted name of the conv layer of interest. [default: layer4.2.conv3]")] = None,
    transform: Annotated[Optional[str], typer.Option(help="MODULE:NAME of a PIL-image-to-tensor callable. [default: resize 256, crop 224, ImageNet normalisation]")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward/backward pass.")] = 64,
    num_workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes decoding images. [default: 0 on 2 cores or fewer, else half the cores, at most 8; per torchrun rank]")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch intra-op threads. [default: on a CPU, the cores the workers leave (OMP_NUM_THREADS wins); on a GPU, torch's]")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    limit: Annotated[Optional[int], typer.Option(help="At most N images per class (a quick subset).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Only these class ids, e.g. 0,5,17.")] = None,
    rows_per_part: Annotated[int, typer.Option(help="Images per Parquet part file (the unit of resume).", hidden=True)] = 4096,
    compact: Annotated[bool, typer.Option(help="When done, rewrite the split's parts class-ordered (as `polysem compact`).")] = True,
    store: StoreOption = DEFAULT_STORE,
):
    """Run the model over DATA_DIR/SPLIT and store per-image attributions and input sums.

    Re-running resumes: images already stored are skipped. Under torchrun, ranks share the work.
    """
    from polysem.ingest import ingest as run_ingest

    summary = run_ingest(
        _store(store), data_dir, split, model=model, weights=weights, layer=layer, transform=transform,
        batch_size=batch_size, num_workers=num_workers, threads=threads, device=device, limit=limit,
        classes=_class_list(classes), rows_per_part=rows_per_part, compact=compact,
    )
    if summary.rank == 0:
        typer.echo(
            f"{summary.split}: {summary.n_written} images stored, {summary.n_already} already there, {summary.n_errors} unreadable"
            f" -> {summary.store}"
        )
        for line in summary.errors:
            typer.echo(f"  unreadable: {line}", err=True)


@command()
def compact(
    split: Annotated[Optional[str], typer.Option(help="Only this split. [default: every split]")] = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Rewrite ingest parts class-ordered, so a query on a few classes reads only theirs.

    Ingest does this when it finishes; run it after an interrupted ingest, or any time (it is atomic:
    queries meanwhile see the old files or the new ones).
    """
    from polysem.query.compact import compact as run_compact

    for done in run_compact(_store(store), split):
        if done.rows_rewritten:
            typer.echo(f"{done.split}: {done.rows_rewritten} rows rewritten, {done.files_before} files -> {done.files_after}")
        else:
            typer.echo(f"{done.split}: already compact ({done.files_after} files)")


@command()
def info(store: StoreOption = DEFAULT_STORE, fmt: TableJsonOption = "table"):
    """What the store holds: model, layer, splits and image counts, classes, runs, size on disk."""
    _check_format(fmt, ("table", "json"))
    details = _store(store).info()
    if fmt == "json":
        typer.echo(json.dumps(details, default=str))
        return
    shape = details["layer_shape"]
    lines = [
        f"store      {details['store']}",
        f"model      {details['model']}  (weights {details['weights']}, sha256 {details['weights_sha256'][:12]})",
        f"layer      {details['layer']}  Conv2d {shape['in_channels']} -> {shape['out_channels']}, kernel {shape['kernel_size']}, "
        f"stride {shape['stride']}, padding {shape['padding']}",
        f"transform  {details['transform']}",
        *([f"imports    {details['model_import_root'] or details['transform_import_root']}  "
           "(where module:callable model and transform are imported from, whatever the working folder)"]
          if details.get("model_import_root") or details.get("transform_import_root") else []),
        f"classes    {details['classes']}",
    ]
    for split, counts in details["splits"].items():
        root = details["dataset_roots"].get(split, "?")
        lines.append(f"split      {split}: {counts['images']} images in {counts['classes']} classes, "
                     f"{counts['unreadable']} unreadable  ({root})")
    lines += [f"runs       {details['runs']}", f"size       {details['size_bytes'] / 1e6:.1f} MB on disk"
              + (f", {details['bytes_per_image']:,} bytes per stored image" if details["bytes_per_image"] else ""),
              f"created    {details['created_at']} by polysem {details['polysem_version']}"]
    typer.echo("\n".join(lines))


@command()
def classes(store: StoreOption = DEFAULT_STORE, fmt: FormatOption = "table"):
    """The store's classes with their image counts per split."""
    _check_format(fmt)
    result = _store(store).query(
        "SELECT c.class_id, c.folder, c.name, c.wnid, c.logit, "
        "count(s.image_id) FILTER (s.split = 'train') AS n_train, count(s.image_id) FILTER (s.split = 'val') AS n_val "
        "FROM classes c LEFT JOIN samples s ON s.target = c.class_id GROUP BY ALL ORDER BY c.class_id"
    )
    render(result, fmt)


@command()
def sql(
    query: Annotated[str, typer.Argument(help="One SELECT statement; views and macros of the store are available.")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet (parquet needs --out).")] = "table",
    out: Annotated[Optional[Path], typer.Option(help="Write the result to this file instead of printing it.")] = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Run a read-only SQL query against the store."""
    _check_format(fmt, ("table", "csv", "json", "parquet"))
    from polysem.query.store import write_result

    if fmt == "parquet" and out is None:
        raise PolysemError("--format parquet writes a file: add --out FILE.parquet")
    target = _store(store)
    if out is not None:
        target.check_outside(out)
    result = target.sql(query)
    if out is not None:
        write_result(result, out, "csv" if fmt == "table" else fmt)
        typer.echo(f"{result.num_rows} rows -> {out}")
    else:
        render(result, fmt)


@command()
def export(
    name_or_query: Annotated[str, typer.Argument(help="A table or view name, a macro call like 'relevant_pairs(p := 0.8)', or a SELECT.")],
    out: Annotated[Path, typer.Option(help="Output file; .parquet, .csv or .json.")],
    store: StoreOption = DEFAULT_STORE,
):
    """Write a table, view, macro result or query to Parquet, CSV or JSON."""
    rows = _store(store).export(name_or_query, out)
    typer.echo(f"{rows} rows -> {out}")


@command()
def check(
    repair: Annotated[bool, typer.Option(help="Set damaged parts aside (re-ingest their split after), rewrite schema files, "
                                              "record pending runs and remove files left by a killed command.")] = False,
    store: StoreOption = DEFAULT_STORE,
):
    """Verify every Parquet file of the store (footer, row counts) against its catalog; exit 2 on a problem."""
    report = _store(store).check(repair=repair)
    for line in report.repaired:
        typer.echo(f"repaired: {line}")
    for line in report.problems:
        typer.echo(f"problem: {line}")
    if not report.ok:
        raise PolysemError(f"{len(report.problems)} problem(s) in {store}; each line above names the file and the fix")
    typer.echo(f"ok: {report.files} Parquet files, {report.rows} rows, readable and consistent with the catalog")


TauOption = Annotated[float, typer.Option(help="Ineq. 2: relevance threshold relative to the positive attribution sum.")]
POption = Annotated[float, typer.Option("--p", help="Ineq. 2: fraction of a class's images for which the channel must be relevant.")]


@command()
def screen(
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Theorem 3.1: report pairs whose ARV cosine is below gamma.")] = GAMMA,
    concepts: Annotated[bool, typer.Option("--concepts", help="Per polysemantic channel: its relevant classes grouped into concepts (complete linkage at gamma), recorded in channel_concepts.")] = False,
    fmt: FormatOption = "table",
    limit: Annotated[Optional[int], typer.Option(help="Show at most N pairs (lowest cosine first), or N channels with --concepts.")] = None,
    correct_only: Annotated[bool, typer.Option(help="Use only correctly classified train images.")] = False,
    store: StoreOption = DEFAULT_STORE,
):
    """Polysemantic candidates: channels relevant for two classes with dissimilar ARVs, or (--concepts) their concepts."""
    _check_format(fmt)
    if concepts:
        from polysem.concepts import channel_concepts

        result = channel_concepts(_store(store), tau, p, gamma, limit=limit, correct_only=correct_only)
        if fmt == "json":  # one object per channel; the sizes are the lengths of the concepts
            result = result.select(["channel", "concepts", "names", "min_cosine"])
        render_concepts(result, fmt, title=f"concepts of polysemantic channels (tau={tau}, p={p}, gamma={gamma})")
        return
    from polysem.query.screening import polysemantic_pairs

    result = polysemantic_pairs(_store(store), tau, p, gamma, limit=limit, correct_only=correct_only)
    render_screen(result, fmt, title=f"polysemantic pairs (tau={tau}, p={p}, gamma={gamma})")


@command()
def wordnet(
    tau: TauOption = TAU,
    p: POption = P,
    wordnet_dir: Annotated[Optional[Path], typer.Option(help="A WordNet 3.0 dict folder to use instead of nltk's data.")] = None,
    store: StoreOption = DEFAULT_STORE,
):
    """WordNet path similarity of every class pair sharing a relevant channel, into class_similarity."""
    from polysem.wordnet import compute_class_similarity

    counts = compute_class_similarity(_store(store), tau, p, wordnet_dir)
    typer.echo(f"{counts['pairs']} class pairs scored into class_similarity"
               + (f"; {counts['skipped_without_wnid']} skipped (class without wnid)" if counts["skipped_without_wnid"] else ""))


@command(plot_app, name="wordnet")
def plot_wordnet(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("wordnet.png"),
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Draw the gamma line here.")] = GAMMA,
    store: StoreOption = DEFAULT_STORE,
):
    """Scatter of WordNet similarity over ARV cosine for all class pairs sharing a channel (supplement Fig. 4)."""
    from polysem.plots import wordnet_scatter
    from polysem.wordnet import similarity_points

    target = _store(store)
    target.check_outside(out)
    points = similarity_points(target, tau, p)
    wordnet_scatter(points, out, tau, p, gamma)
    n = len(points)
    typer.echo(f"{n} points -> {out}")


def _split_values(values: list[str] | None) -> list[str]:
    """`--concept1 530 --concept1 531` and `--concept1 530,531` mean the same."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


@command()
def disentangle(
    channel: Annotated[Optional[int], typer.Option(help="Channel of the layer of interest to split.")] = None,
    concept1: Annotated[Optional[list[str]], typer.Option(help="Class id or name of concept 1; repeat or use commas for several.")] = None,
    concept2: Annotated[Optional[list[str]], typer.Option(help="Class id or name of concept 2; repeat or use commas for several.")] = None,
    concept: Annotated[Optional[list[str]], typer.Option(help="One concept's classes, comma-separated; repeat once per concept (k >= 2) instead of --concept1/--concept2.")] = None,
    rho: Annotated[str, typer.Option(help="auto (Eq. 6 over 0.05..1.00) or a value in (0, 1].")] = "auto",
    objective: Annotated[str, typer.Option(help="Eq. 6 with |.| (abs, the paper) or max(.,0) + 1e-5 (positive, reference code).")] = "abs",
    from_screen: Annotated[bool, typer.Option(help="Take the --limit channels of `polysem screen --concepts` with the lowest between-concept cosine, each with all its concepts.")] = False,
    limit: Annotated[int, typer.Option(help="With --from-screen: how many channels to disentangle into one model.")] = 1,
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="With --from-screen: the complete-linkage threshold that groups classes into concepts.")] = GAMMA,
    data: Annotated[Optional[Path], typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    force: Annotated[bool, typer.Option(help="Proceed when the channel is not relevant for a concept class, or a fixed --rho leaves a concept without sources.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch for feature maps and the check.")] = 64,
    fmt: TableJsonOption = "table",
    store: StoreOption = DEFAULT_STORE,
):
    """Split a channel into one channel per concept plus a residual; the model's outputs stay the same.

    The run (split, rho, check) is recorded in the store's `runs` table and the model in its artifacts.
    """
    _check_format(fmt, ("table", "json"))
    import warnings

    from polysem.disentangling import ChannelRequest, disentangle_channels, requests_from_screen

    target = _store(store)
    if from_screen:
        if channel is not None or concept1 or concept2 or concept:
            raise PolysemError("--from-screen picks channels and concepts itself; drop --channel and the concepts")
        if limit < 1:
            raise PolysemError(f"--limit must be at least 1, got {limit}")
        requests = requests_from_screen(target, tau=tau, p=p, gamma=gamma)  # all candidates, best first
    else:
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
        requests = [ChannelRequest(channel, concepts)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = disentangle_channels(target, requests, rho=rho, objective=objective, data_dir=data, force=force,
                                    device=device, batch_size=batch_size, tau=tau, p=p,
                                    take=limit if from_screen else None)
    for warning in caught:
        typer.echo(f"Warning: {warning.message}", err=True)
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
            f"on {run['parameters']['check_images']} images -> {target.path / run['artifact']}"
        )
        for message in run["warnings"]:
            typer.echo(f"Warning: {message}", err=True)


@command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="Run id from `polysem disentangle` or `polysem runs`.")],
    tau: TauOption = TAU,
    plots: Annotated[Optional[Path], typer.Option(help="Write the density and top-image plots (PNG) into this folder.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for the plots).")] = "auto",
    fmt: TableJsonOption = "table",
    store: StoreOption = DEFAULT_STORE,
):
    """How much of each concept's activation moved to c'1 and c'2, on the val split (recorded in `evaluations`)."""
    _check_format(fmt, ("table", "json"))
    from polysem.evaluation import evaluate as run_evaluate

    result = run_evaluate(_store(store), run_id, tau=tau, plots_dir=plots, data_dir=data, device=device)
    if fmt == "json":
        typer.echo(json.dumps(result))
        return
    target = _store(store)
    concepts = target.query("SELECT concepts FROM runs WHERE run_id = ?", [run_id]).column("concepts")[0].as_py()
    render_evaluation(result, concepts, _class_names(target),
                      f"run {run_id}: fraction of the original activation (val, tau={tau})")
    for path in result.get("plots", []):
        typer.echo(f"plot -> {path}")


@command()
def verify(
    run_id: Annotated[str, typer.Argument(help="Run id from `polysem disentangle` or `polysem runs`.")],
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="A new channel relevant for two classes whose ARV cosine is below gamma is still polysemantic.")] = GAMMA,
    limit: Annotated[Optional[int], typer.Option(help="At most N train images per class (the first by image id); default all.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward/backward pass.")] = 64,
    fmt: TableJsonOption = "table",
    store: StoreOption = DEFAULT_STORE,
):
    """Screen the new channels of a run: is each relevant only for classes of one concept? (recorded in `verifications`)"""
    _check_format(fmt, ("table", "json"))
    from polysem.verification import verify as run_verify

    result = run_verify(_store(store), run_id, tau, p, gamma, limit=limit, data_dir=data, device=device,
                        batch_size=batch_size, progress=fmt == "table")
    if fmt == "json":
        typer.echo(json.dumps({k: result[k] for k in ("run_id", "resolved", "channels", "classes", "n_images")}
                              | {"tau": tau, "p": p, "gamma": gamma}))
        return
    render_verification(result, f"run {run_id}: new channels on {result['n_images']} train images of classes "
                                f"{', '.join(map(str, result['classes']))} (tau={tau}, p={p})")
    typer.echo(f"run {run_id}: {'resolved' if result['resolved'] else 'not resolved'} "
               f"(gamma={gamma}: {'no' if result['resolved'] else 'some'} new channel relevant for a pair below gamma)")


@command()
def runs(
    run_id: Annotated[Optional[str], typer.Argument(help="Show this run's full record instead of the list.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json; csv and json hold every column.")] = "table",
    store: StoreOption = DEFAULT_STORE,
):
    """Every disentanglement run with its evaluation (the paper's quantitative table), or one run in full."""
    _check_format(fmt)
    target = _store(store)
    if run_id is None:
        render_runs(target.query("SELECT * FROM run_summary"), fmt, _class_names(target))
        return
    record = target.query(
        "SELECT r.*, s.* EXCLUDE (run_id, created_at, channel, concepts, rho, objective, max_logit_diff, warnings) "
        "FROM runs r JOIN run_summary s USING (run_id) WHERE run_id = ?", [run_id]).to_pylist()
    if not record:
        raise PolysemError(f"unknown run id '{run_id}'; `polysem runs` lists them")
    render_record(record[0], fmt, _class_names(target))


def _class_names(target) -> dict[int, str]:
    return {r["class_id"]: r["name"] for r in target.query("SELECT class_id, name FROM classes").to_pylist()}


class Method(str, Enum):
    """Feature visualisation parameterisations (a closed set: the help lists them, the parser refuses others)."""

    maco = "maco"
    fourier = "fourier"


@command()
def visualize(
    run_id: Annotated[Optional[str], typer.Argument(help="Run id from `polysem runs`; or give --channel instead.")] = None,
    channel: Annotated[Optional[int], typer.Option(help="A channel of the stored model (instead of a RUN_ID).")] = None,
    method: Annotated[Method, typer.Option(help="maco (phase only, the store's own magnitude spectrum) or fourier (Lucid).")] = Method.maco,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 512,
    size: Annotated[int, typer.Option(help="Side of the optimised images in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same images on one device.")] = 0,
    data: Annotated[Optional[Path], typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fmt: TableJsonOption = "table",
    store: StoreOption = DEFAULT_STORE,
):
    """Feature visualisations of the original channel, c'1, c'2 and r of a run, in one batch.

    Each image maximises one unit's spatially summed activation; every unit's activation on every
    image is recorded in the store's `visualizations` table, the PNGs under its artifacts.
    """
    _check_format(fmt, ("table", "json"))
    from polysem.visualize import visualize as run_visualize

    result = run_visualize(_store(store), run_id, channel=channel, method=method.value, steps=steps, size=size,
                           seed=seed, device=device, data_dir=data)
    if fmt == "json":
        typer.echo(json.dumps(result))
        return
    import pyarrow as pa

    rows = [{"unit": unit, "activation": v["activation"], **{f"act_{u}": a for u, a in v["activations"].items()},
             "selectivity": v["selectivity"], "image": v["image"]} for unit, v in result.items()]
    first = next(iter(result.values()))
    render(pa.Table.from_pylist(rows), "table",
           title=f"{run_id or f'channel {channel}'}: {first['method']}, {first['steps']} steps, {first['size']} px, "
                 f"seed {first['seed']}, {first['seconds']:.1f} s on {first['device']}")


@command()
def report(
    out: Annotated[Path, typer.Option(help="Folder for index.html and its images.")] = Path("polysem-report"),
    data: Annotated[Optional[Path], typer.Option(help="DATA_DIR now holding the images, if they moved since ingest.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for the panels).")] = "auto",
    store: StoreOption = DEFAULT_STORE,
):
    """A self-contained static page of the store (index.html plus images) to open in a browser or share."""
    from polysem.report import write_report

    index = write_report(_store(store), out, data_dir=data, device=device)
    typer.echo(f"report -> {index}")


def main() -> None:
    """The console entry point: usage errors (an unknown option, a value of the wrong type) become
    one `Error:` line and exit 2 like every other error, not click's usage block."""
    import sys

    import click

    # typer vendors its own click from 0.20 on: catch its exceptions and click's
    usage_errors = tuple(c for c in (click.ClickException, getattr(typer, "TyperException", None)) if c)
    try:
        code = app(standalone_mode=False)
    except (click.exceptions.Abort, typer.Abort):
        sys.exit(130)
    except usage_errors as error:
        message = (error.format_message() if hasattr(error, "format_message") else str(error)).rstrip(".")
        known = typer.main.get_command(app).commands
        command = next((a for a in sys.argv[1:2] if a in known), None)
        typer.echo(f"Error: {message}; see `polysem {command + ' ' if command else ''}--help`", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
