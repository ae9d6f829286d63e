"""Commands on the store itself: ingest, compact, info, classes, sql, export, check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from polysem.cli.app import (
    DEFAULT_STORE,
    DeviceOption,
    FormatOption,
    LayerOption,
    StoreOption,
    TableJsonOption,
    TrustOption,
    _check_format,
    _store,
    as_flags,
    command,
)
from polysem.cli.printing import (
    print_warning,
    render,
)
from polysem.errors import PolysemError
from polysem.util.parsing import whole_numbers
from polysem.util.text import escape_controls


@command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR", help="Folder holding one ImageFolder tree per split (DATA_DIR/SPLIT/CLASS/IMAGE).")],
    *,
    split: Annotated[str, typer.Option(help="Split folder to ingest (train, val, ...).")] = "train",
    model: Annotated[str | None, typer.Option(help="torchvision model name or package.module:callable. [default: resnet50, or the store's]")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet, random[:SEED] or a state_dict path. [default: imagenet / the callable's own]")] = None,
    layer: Annotated[list[str] | None, typer.Option(help="Dotted name of the layer of interest: a Conv2d, or a Linear applied per token or position (`polysem layers` lists them). [default: layer4.2.conv3]")] = None,
    positions: Annotated[str | None, typer.Option(help="Which positions of a Linear layer count: all, cls (the class token, the first of dim 1) or patch (the other tokens). [default: all, or the store's]")] = None,
    transform: Annotated[str | None, typer.Option(help="MODULE:NAME of a PIL-image-to-tensor callable. [default: resize 256, crop 224, ImageNet normalisation]")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward/backward pass.")] = 64,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes decoding images. [default: 0 on 2 cores or fewer, else half the cores, at most 8; per torchrun rank]")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads. [default: on a CPU, the cores the workers leave (OMP_NUM_THREADS wins); on a GPU, torch's]")] = None,
    device: DeviceOption = "auto",
    limit: Annotated[int | None, typer.Option(help="At most N images per class (a quick subset).")] = None,
    classes: Annotated[str | None, typer.Option(help="Only these class ids, e.g. 0,5,17.")] = None,
    rows_per_part: Annotated[int, typer.Option(help="Images per Parquet part file (the unit of resume).", hidden=True)] = 4096,
    compact: Annotated[bool, typer.Option(help="When done, rewrite the split's parts class-ordered (as `polysem compact`).")] = True,
    max_pixels: Annotated[int | None, typer.Option(help="Images of more pixels are listed as unreadable, not decoded. [default: Pillow's limit, 89478485]")] = None,
    decode: Annotated[str | None, typer.Option(help="pil: torchvision's PIL pipeline; tensor: batched decode_jpeg and the default transform as tensors on --device (nvJPEG on a GPU; other pixels than pil's). [default: pil, or the store's]")] = None,
    rank_timeout: Annotated[float, typer.Option(help="Under torchrun: seconds the ranks wait for every rank to join, and for a rank that gives no sign of life, before they stop naming it.")] = 300.0,
    target: Annotated[str | None, typer.Option(help="The logit each image is attributed to: label (its class's, the paper's) or predicted (the model's argmax). [default: label, or the store's]")] = None,
    trust_code: TrustOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Run the model over DATA_DIR/SPLIT and store per-image attributions and input sums.

    Re-running resumes: images already stored are skipped. Under torchrun, ranks share the work.
    """
    from polysem.ingest import ingest as run_ingest

    summary = run_ingest(
        _store(store, trust_code), data_dir, split, model=model, weights=weights,
        layer=layer[0] if layer and len(layer) == 1 else layer, positions=positions, transform=transform,
        batch_size=batch_size, num_workers=num_workers, threads=threads, device=device, limit=limit,
        classes=whole_numbers("classes", classes, "class ids", "0,5,17"), rows_per_part=rows_per_part,
        compact=compact, max_pixels=max_pixels, decode=decode, rank_timeout=rank_timeout, target=target,
    )
    if summary.rank == 0:
        typer.echo(
            f"{summary.split}: {summary.n_written} images stored, {summary.n_already} already there, {summary.n_errors} unreadable"
            f" -> {summary.store}"
        )
        for line in summary.errors:
            typer.echo(f"  unreadable: {line}", err=True)
        for line in summary.warnings:
            typer.echo(escape_controls(f"Warning: {as_flags(line)}"), err=True)


@command()
def layers(
    *,
    model: Annotated[str, typer.Option(help="torchvision model name or package.module:callable.")],
    weights: Annotated[str | None, typer.Option(help="imagenet, random[:SEED] or a state_dict path. [default: random for a torchvision name (the layers need no download), the callable's own]")] = None,
    size: Annotated[int, typer.Option(help="Side in pixels of the one square image run through the model to see how each Linear is applied (the model's input size).")] = 224,
    channels: Annotated[int, typer.Option(help="Channels of that image (1 for a grayscale model).")] = 3,
    fmt: FormatOption = "table",
):
    """The conv and Linear layers of a model, with type, weight shape and stride, and whether `ingest --layer`
    can take each (and why not). A model that does not run on the one image leaves its Linears unchecked (takes
    empty), with a warning naming its error."""
    _check_format(fmt)
    from polysem.ingest.models import model_layers

    table = model_layers(model, weights, size=size, channels=channels)
    unchecked = [row["why_not"] for row in table.to_pylist() if row["takes"] is None]
    if unchecked:
        print_warning(as_flags(f"{len(unchecked)} Linear layer(s) unchecked: {unchecked[0].removeprefix('unchecked: ')}"))
    render(table, fmt)


@command()
def compact(
    split: Annotated[str | None, typer.Option(help="Only this split. [default: every split]")] = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Rewrite ingest parts class-ordered, so a query on a few classes reads only theirs.

    Ingest does this when it finishes; run it after an interrupted ingest, or any time (it is atomic:
    queries meanwhile see the old files or the new ones).
    """
    from polysem.query.compact import compact as run_compact

    for done in run_compact(_store(store, layer=layer), split):
        if done.rows_rewritten:
            typer.echo(f"{done.split}: {done.rows_rewritten} rows rewritten, {done.files_before} files -> {done.files_after}")
        else:
            typer.echo(f"{done.split}: already compact ({done.files_after} files)")


@command()
def info(layer: LayerOption = None, store: StoreOption = DEFAULT_STORE, fmt: TableJsonOption = "table", trust_code: TrustOption = None):
    """What the store holds: model, layer, splits and image counts, classes, runs, size on disk, and which
    code it names, from where, and whether that code would be imported or refused."""
    _check_format(fmt, ("table", "json"))
    details = _store(store, trust_code, layer).info()
    if fmt == "json":
        typer.echo(json.dumps(details, default=str))
        return
    from polysem.query.meta import layer_positions


    def described(name: str, shape: dict) -> str:
        if shape.get("kind") == "linear":
            return (f"{name}  Linear {shape['in_channels']} -> {shape['out_channels']} per token or position, "
                    f"positions {layer_positions(shape)}")
        return (f"{name}  Conv2d {shape['in_channels']} -> {shape['out_channels']}, kernel {shape['kernel_size']}, "
                f"stride {shape['stride']}, padding {shape['padding']}")

    lines = [
        f"store      {details['store']}",
        f"model      {details['model']}  (weights {details['weights']}, sha256 {details['weights_sha256'][:12]})",
        *(f"layer      {described(name, shape)}" for name, shape in details["layers"].items()),
        f"transform  {details['transform']}  (decoded with {details['decode']})",
        *(_code_line(what, details["code"][what]) for what in ("model", "transform")),
        f"classes    {details['classes']}",
    ]
    for split, counts in details["splits"].items():
        root = details["dataset_roots"].get(split, "?")
        by_layer = details["layer_images"].get(split, {})
        layers = (f"; by layer: {', '.join(f'{name} {n}' for name, n in by_layer.items())}"
                  if len(set(by_layer.values())) > 1 else "")  # only where the layers differ
        lines.append(f"split      {split}: {counts['images']} images in {counts['classes']} classes, "
                     f"{counts['unreadable']} unreadable  ({root}){layers}")
    lines += [f"runs       {details['runs']}", f"size       {details['size_bytes'] / 1e6:.1f} MB on disk"
              + (f", {details['bytes_per_image']:,} bytes per stored image" if details["bytes_per_image"] else ""),
              f"created    {details['created_at']} by polysem {details['polysem_version']}"]
    typer.echo("\n".join(lines))


def _code_line(what: str, code: dict) -> str:
    """Which code the store names for `what`, where it would be imported from, or why it is refused."""
    head = f"{what + ' code':<15}"
    if code["status"] == "no code":
        from polysem.query.meta import DATASET_TRANSFORM
        from polysem.util.imports import OBJECT_PREFIX

        if code["spec"].startswith(OBJECT_PREFIX) or code["spec"] == DATASET_TRANSFORM:
            return f"{head}none: {code['spec']} is a Python object the process gives (polysem.use)"
        return f"{head}none: {code['spec']} is {'a torchvision model' if what == 'model' else 'built in'}"
    if code["status"] == "refused":
        return f"{head}{code['spec']} REFUSED (recorded folder {code['import_root']}): {as_flags(code['reason'])}"
    whose = "the folder you named" if code["status"] == "trusted (named)" else "the folder its first ingest recorded"
    return (f"{head}{code['spec']} imported from {code['imports_from']} ({whose}, outside the store): "
            f"runs {code['module_file'] or 'a namespace package of that folder'}")


@command()
def classes(
    set_from: Annotated[Path | None, typer.Option("--set", help="A classes.json whose names and WordNet ids replace the store's ({\"folder\": {\"name\": ..., \"wnid\": ...}}); logits stay as ingested.")] = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
    fmt: FormatOption = "table",
):
    """The store's classes with their image counts in every split it holds (n_<split>); --set renames them."""
    _check_format(fmt)
    target = _store(store, layer=layer)
    if set_from is not None:
        from polysem.ingest.dataset import relabel_classes

        changed = relabel_classes(target, set_from)
        typer.echo(f"{len(changed)} classes changed" + ("" if not changed else
                   f" ({', '.join(str(r['class_id']) for r in changed[:8])}{', ...' if len(changed) > 8 else ''}); "
                   "run `polysem wordnet` again for classes whose wnid changed"), err=True)
    render(target.classes(), fmt)


@command()
def sql(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="One SELECT statement; views and macros of the store are available.")],
    fmt: Annotated[str | None, typer.Option("--format", help="table, csv or json on the terminal; with --out: parquet, csv or json. [default: table, or the --out suffix's]")] = None,
    out: Annotated[str | None, typer.Option(metavar="FILE", help="Write the result to this file (--format, else its suffix: .parquet, .csv, .json); - for standard output (with --format).")] = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Run a read-only SQL query against the store."""
    from polysem.query.serialise import out_format, write_result

    target = _store(store, layer=layer)
    if out is None:
        if fmt == "parquet":
            raise PolysemError("--format parquet writes a file: add --out FILE.parquet")
        _check_format(fmt or "table")
        render(target.sql(query), fmt or "table")
        return
    path = target.check_outside(out, stdout=True)  # None: standard output
    file_format = out_format(out, fmt)  # refuses a format that is no file format, or a suffix it cannot tell
    result = target.sql(query)
    write_result(result, path, file_format)
    if path is not None:  # on standard output the result alone
        typer.echo(f"{result.num_rows} rows -> {out} ({file_format})")


@command()
def export(
    name_or_query: Annotated[str, typer.Argument(metavar="NAME_OR_QUERY", help="A table or view name, a macro call like 'relevant_pairs(p := 0.8)', or a SELECT.")],
    out: Annotated[str, typer.Option(metavar="FILE", help="Output file; --format, else its suffix: .parquet, .csv or .json; - for standard output (with --format).")],
    fmt: Annotated[str | None, typer.Option("--format", help="parquet, csv or json. [default: the --out suffix's]")] = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Write a table, view, macro result or query to Parquet, CSV or JSON."""
    rows = _store(store, layer=layer).export(name_or_query, out, fmt=fmt)
    if out != "-":  # on standard output the result alone
        typer.echo(f"{rows} rows -> {out}")


@command()
def check(
    repair: Annotated[bool, typer.Option(help="Set damaged parts aside (re-ingest their split after), rewrite schema files, "
                                              "record pending runs and remove files left by a killed command.")] = False,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Verify every Parquet file of the store (footer, row counts) against its catalog; exit 2 on a problem."""
    report = _store(store, layer=layer).check(repair=repair)
    for line in report.repaired:
        typer.echo(f"repaired: {line}")
    for line in report.problems:
        typer.echo(f"problem: {as_flags(line)}")
    if not report.ok:
        raise PolysemError(f"{len(report.problems)} problem(s) in {store}; each line above names the file and the fix")
    typer.echo(f"ok: {report.files} Parquet files, {report.rows} rows, readable and consistent with the catalog")
