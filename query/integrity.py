"""`polysem check`: is every file of a store readable and consistent with its catalog?

Reads each Parquet footer (no data pages, so it is fast on a large store) and
compares row counts with what the catalog says must be there. With `repair`, it
does what can be done without the images or the model: sets damaged parts aside
(so re-ingesting their split stores those images again), rewrites the schema
files, records pending runs and sweeps files left by a killed command.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from polysem.errors import PolysemError
from polysem.query import layout
from polysem.query.diagnostics import damaged_file
from polysem.query.meta import DATASET_TRANSFORM, IncompleteStore
from polysem.query.recovery import BadPending, pending_records
from polysem.query.split_lock import lock_split

__all__ = ["DAMAGED_SUFFIX", "CheckReport", "check_store", "incomplete_layers"]

ARTIFACT_PATH = re.compile(r"artifacts/[0-9a-f]{10}\.pt")  # the model files polysem writes (method.runs)
DAMAGED_SUFFIX = ".damaged"  # no `*.parquet` glob of a view or of ingest's resume reads it


@dataclass
class CheckReport:
    """What `check` found: files and rows read, problems (each with its fix), repairs done."""

    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(store, repair: bool = False) -> CheckReport:
    store.require()
    _check_layer_choice(store)
    report = CheckReport()
    root = store.path
    try:
        store.meta(any_layer=True)
    except IncompleteStore as error:
        # A first ingest stopped: what is missing (the metadata, maybe classes and layer weights) is made
        # from the images and the model, which only ingest has; --repair leaves the store as it is.
        report.problems.append(f"{error}{' (check --repair cannot: the store records no model yet)' if repair else ''}")
        return report
    except PolysemError:
        pass  # a damaged catalog: reported below, after the files it may name
    with _split_locks(root, repair):
        if repair:
            layout.write_schema_files(root, replace=True)
        damaged_parts = _check_parts(root, report, repair)
    class_rows = _footer_rows(root / "classes.parquet", root, report)
    weight_rows = _footer_rows(root / "layer_weights.parquet", root, report)

    try:
        meta = store.meta(any_layer=True)
        runs = store.reads.run_artifacts().to_pylist()
    except PolysemError as error:
        if not any(str(path) in str(error) for path in damaged_parts):  # a damaged part fails the catalog too
            report.problems.append(str(error))
        return report
    for i, (name, shape) in enumerate((meta.get("layers") or {}).items()):  # each layer's weight, the first's first
        path = layout.weights_file(root, name, next(iter(meta["layers"])))
        rows = weight_rows if i == 0 else _footer_rows(path, root, report)
        out_channels = (shape or {}).get("out_channels")
        if rows is not None and out_channels is not None and rows != out_channels:
            report.problems.append(f"{path} has {rows} rows but layer {name} has {out_channels} channels; ingest "
                                   "into a new `store`")
    report.problems += _layer_problems(store, meta.get("layers") or {})
    report.problems += _row_problems(store, meta)
    if class_rows == 0:
        report.problems.append(f"{root / 'classes.parquet'} lists no class; ingest into a new `store`")
    for run in runs:
        if not isinstance(run["artifact"], str) or not ARTIFACT_PATH.fullmatch(run["artifact"]):
            report.problems.append(f"run {run['run_id']} names the model file {run['artifact']!r}, not one of the "
                                   "store's artifacts/<id>.pt: the catalog was edited; restore it from a backup")
            continue
        artifact = root / run["artifact"]
        if not artifact.is_file():
            report.problems.append(f"run {run['run_id']}: its model {artifact} is missing; "
                                   "run `polysem disentangle` again for it")
        elif not _whole_zip(artifact):  # torch.save writes a zip archive; a cut one fails its CRCs
            report.problems.append(f"run {run['run_id']}: its model {artifact} is damaged; "
                                   "run `polysem disentangle` again for it")

    _check_pending(root, report, repair)
    if repair:
        with store.connect(write=True):
            pass  # records pending runs and sweeps leftovers
    return report


def _check_layer_choice(store) -> None:
    """A layer the store lacks is the caller's mistake, refused, not a problem of the store."""
    if store.layer is None:
        return
    try:
        type(store)(store.path, store.trust_code).meta(any_layer=True)
    except PolysemError:
        return  # damage, or a half-made store: named by the check
    store.meta(any_layer=True)  # the store's metadata reads: what fails now is the choice (`Store.meta`'s refusal)


def _row_problems(store, meta: dict) -> list[str]:
    """Rows each split holds at each layer that ingest cannot have written (`misshapen_rows`): values of other
    lengths than the layer's shape, a target that is no class, a path outside the split's recorded folder (the
    rule the figures apply before they open an image, `layout.image_path_in_root`); and a split of image files
    whose folder is none an ingest records."""
    problems = []
    roots = meta.get("dataset_roots") or {}
    items = meta.get("transform") == DATASET_TRANSFORM  # a store of Datasets: its rows name items, not files
    counts = store.reads.layer_image_counts().to_pylist()
    folders = {}
    for split in sorted({row["split"] for row in counts} | set(roots)):
        problem = None if items else layout.image_root_problem(roots.get(split))
        if problem is not None and roots.get(split) is None:  # rows whose folder was never recorded
            problems.append(f"split '{split}': {problem}; ingest the split again (polysem ingest DATA_DIR --split "
                            f"{split}), which records it and keeps the rows stored")
        elif problem is not None:
            problems.append(f"split '{split}': {problem}; ingest never writes that: the catalog was edited; ingest "
                            "the split into a new `store`")
        folders[split] = None if items or problem is not None else roots[split]
    for name, shape in (meta.get("layers") or {}).items():
        if not shape:
            continue
        kernel = shape.get("kernel_size") or [1, 1]
        params = {"channels": shape.get("out_channels"), "input_len": shape.get("in_channels", 0) * kernel[0] * kernel[1]}
        for split in sorted({row["split"] for row in counts if row["layer"] == name}):
            folder = folders.get(split)
            found = store.for_layer(name).reads.misshapen_rows(split=split, root=folder, **params) or {}
            wrong = {"attribution": f"an attribution of other than {params['channels']} values (the layer's channels)",
                     "input_sum": f"input sums of other than {params['input_len']} values (its input channels x "
                                  "window)",
                     "target": "a target that is no class of the store",
                     "path": f"a path outside the split's folder {folder} (the first: {found.get('first_path')})"}
            for what, text in wrong.items():
                if found.get(what):
                    problems.append(f"{found[what]} row(s) of split '{split}' at layer {name} have {text}; ingest "
                                    "never writes that: a part was edited; ingest the split into a new `store`")
    return problems


def _layer_problems(store, layers: dict) -> list[str]:
    """Layer folders and weight files of no layer the catalog records (their rows would show in `samples`), and
    layers that hold fewer of a split's images than another layer (an ingest stopped before it finished)."""
    root, problems = store.path, []
    for folder in sorted(root.glob(f"samples/*/{layout.LAYER_PREFIX}*")):
        if folder.name.removeprefix(layout.LAYER_PREFIX) not in layers:
            problems.append(f"{folder} holds rows of a layer the store does not record; polysem never writes that: "
                            "remove the folder, or restore the store from a backup")
    for path in sorted(root.glob("layer_weights-*.parquet")):
        if path.stem.removeprefix("layer_weights-") not in layers:
            problems.append(f"{path} is the weight of a layer the store does not record; remove it")
    problems += incomplete_layers(store)
    return problems


def incomplete_layers(store, split: str | None = None) -> list[str]:
    """One line per layer that holds fewer of a split's images than another layer of the store, naming the fix."""
    counts = store.reads.layer_image_counts().to_pylist()
    lines = []
    for name in sorted({row["split"] for row in counts} if split is None else {split}):
        rows = {row["layer"]: row["n"] for row in counts if row["split"] == name}
        if not rows:
            continue
        most = max(rows.values())
        for layer in [layer for layer in stored_layers_of(store) if rows.get(layer, 0) < most]:
            lines.append(f"layer {layer} holds {rows.get(layer, 0)} of split '{name}''s {most} images (an ingest "
                         f"stopped before it finished): run `polysem ingest DATA_DIR --split {name} --layer {layer}` "
                         "to complete it")
    return lines


def stored_layers_of(store) -> list[str]:
    return list(store.meta(any_layer=True).get("layers") or {})


def _check_pending(root: Path, report: CheckReport, repair: bool) -> None:
    """Pending records polysem cannot have written: named, or, with `repair`, set aside (every command that
    writes would refuse them)."""
    while True:
        try:
            pending_records(root)
            return
        except BadPending as bad:
            if not repair:
                report.problems.append(str(bad))
                return
            aside = bad.path.with_name(bad.path.name + DAMAGED_SUFFIX)
            bad.path.rename(aside)
            report.repaired.append(f"set aside {bad.path} as {aside.name}: not a pending record polysem wrote")


@contextmanager
def _split_locks(root: Path, repair: bool) -> Iterator[None]:
    """With `repair`, every split's lock (query.split_lock.lock_split), so that no ingest or compaction changes
    a split's files while they are checked and set aside; without it, nothing (`_check_parts` lists again
    when a compaction removed a file it was reading)."""
    with ExitStack() as locks:
        if repair:
            for folder in layout.split_folders(root):
                locks.enter_context(lock_split(root, folder.name))
        yield


def _check_parts(root: Path, report: CheckReport, repair: bool) -> list[Path]:
    """Every part's footer, checked for its columns and for images that another part holds too; the
    damaged parts, set aside with `repair` (before the catalog is opened: defining the samples view reads
    every part's schema). A file that vanished while it was read was removed by a concurrent compaction,
    which swapped in the same rows: the split is listed and read again."""
    for _attempt in range(5):
        attempt = CheckReport()
        damaged = []
        for table, path in layout.part_files(root):
            is_part = not layout.is_schema_file(path.relative_to(root))  # anything else the views read is set aside
            if _footer_rows(path, root, attempt, record=not (repair and is_part), table=table) is None and is_part:
                damaged.append(path)
        if all(path.exists() for path in damaged):
            break
    repeating = _duplicated_parts(root, damaged)
    if not repair:
        attempt.problems += repeating.values()
    damaged += repeating
    report.files, report.rows = report.files + attempt.files, report.rows + attempt.rows
    report.problems += attempt.problems
    if repair:
        for path in damaged:
            aside = path.with_name(path.name + DAMAGED_SUFFIX)
            path.rename(aside)
            split = layout.part_split(path.relative_to(root))
            again = f"ingest split '{split}' again to store its images" if split else "polysem never writes a part there"
            report.repaired.append(f"set aside {path} as {aside.name}; {again}")
    return damaged


def _duplicated_parts(root: Path, damaged: list[Path]) -> dict[Path, str]:
    """The samples parts that repeat images another part of the same split holds (a part copied under a
    second name, say), each with its problem: every query would count those images twice. Of the files
    sharing an image, the first by name keeps it. Reads the image ids only."""
    import duckdb

    from polysem.query.sqlfiles import Statements

    problems: dict[Path, str] = {}
    folders = [f for split in layout.split_folders(root, "samples")
               for f in (split, *sorted(split.glob(f"{layout.LAYER_PREFIX}*")))]  # a split's files, then each layer's
    for folder in folders:
        files = sorted(p for p in folder.glob("*.parquet") if p not in damaged)
        if len(files) < 2:
            continue
        with duckdb.connect() as con:
            rows = Statements(con).parquet_repeated_images(files=[str(f) for f in files]).to_pylist()
        repeats: dict[Path, tuple[str, int]] = {}  # a repeating file: the first file holding its images, how many
        for holders in (row["files"] for row in rows):
            for other in holders[1:]:
                keeper, n = repeats.get(Path(other), (Path(holders[0]).name, 0))
                repeats[Path(other)] = (keeper, n + 1)
        for path, (keeper, n) in sorted(repeats.items()):
            problems[path] = (f"{path.relative_to(root)} repeats {n} image{'s' if n != 1 else ''} that {keeper} "
                              "holds too (a copied part), which every query would count twice; "
                              "`polysem check --repair` sets it aside")
    return problems


def _footer_rows(path: Path, root: Path, report: CheckReport, record: bool = True, table: str | None = None
                 ) -> int | None:
    """Rows the file's footer promises, checked against its row groups (and, for a part of `table`, its
    columns against polysem's); None (and a problem, unless `record` is false) if unreadable."""
    try:
        problem = layout.schema_problem(table, path) if table is not None else None
        if problem is not None:
            raise OSError(problem)
        metadata = pq.read_metadata(path)
        rows = sum(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        if rows != metadata.num_rows:
            raise OSError(f"footer says {metadata.num_rows} rows, its row groups hold {rows}")
        if _data_end(metadata) > path.stat().st_size:
            raise OSError("the file is shorter than its column chunks")
        if table == "samples" and (forged := _impossible_positive_sums(metadata)):
            raise OSError(forged)
    except layout.UNREADABLE as error:
        why = "missing" if not path.exists() else str(error).strip().splitlines()[0]
        if record:
            report.problems.append(str(damaged_file(root, path.relative_to(root), why)))
        return None
    report.files += 1
    report.rows += rows
    return rows


def _impossible_positive_sums(metadata) -> str | None:
    """positive_sum values no attribution gives, from the footer's statistics alone (no data read): below 0,
    or NaN (a row group with values but no min/max). Other forged values take a scan: docs/reliability.md, Known limits."""
    names = [metadata.schema.column(j).name for j in range(metadata.num_columns)]
    if "positive_sum" not in names:
        return None
    column = names.index("positive_sum")
    for i in range(metadata.num_row_groups):
        chunk = metadata.row_group(i).column(column)
        stats = chunk.statistics
        if stats is None:
            continue
        if stats.has_min_max and stats.min < 0:
            return f"its positive_sum holds {stats.min}, below 0, which no attribution gives"
        if not stats.has_min_max and stats.null_count < chunk.num_values:
            return "its positive_sum holds NaN, which no attribution gives"
    return None


def _data_end(metadata) -> int:
    """The last byte any column chunk claims: a file cut inside its data but with a footer
    (written over by hand, or a copy that stopped) is caught without reading the data."""
    end = 0
    for i in range(metadata.num_row_groups):
        for j in range(metadata.num_columns):
            chunk = metadata.row_group(i).column(j)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            end = max(end, start + chunk.total_compressed_size)
    return end


def _whole_zip(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False
