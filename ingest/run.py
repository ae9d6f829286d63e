"""The ingest job: run a CNN over an image folder and store per-image attributions.

Runs as one process or under `torchrun` (each rank takes every world_size-th
remaining image and writes its own parts). Resumable: images already stored
(or already recorded as unreadable) are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader

from polysem.errors import DataError, ModelError, PolysemError, StoreMismatch
from polysem.ingest.attribution import attribute_batch
from polysem.ingest.dataset import SplitListing, class_rows, list_split
from polysem.ingest.decode import check_decode, check_device_decoder, loading
from polysem.ingest.models import (
    DEFAULT_TRANSFORM,
    ResolvedModel,
    ResolvedTransform,
    layer_shape,
    resolve_device,
    resolve_layer,
    resolve_model,
    resolve_transform,
)
from polysem.ingest.ranks import DEFAULT_RANK_TIMEOUT, RANK_TIMEOUT_MAX, Ranks, start_ranks
from polysem.ingest.threads import cores_per_process, default_num_workers, default_threads, torch_threads
from polysem.ingest.writer import PartWriter, list_column
from polysem.query import Store, layout
from polysem.query.compact import compact_split, lock_split
from polysem.query.confine import check_tree, open_lock
from polysem.query.diagnostics import query_error
from polysem.query.meta import (
    DEFAULT_DECODE,
    SCHEMA_VERSION,
    dataset_root_key,
    meta_complete,
    read_meta,
    recorded_decode,
    write_meta,
)
from polysem.query.sqlfiles import run_statement
from polysem.query.store import as_store
from polysem.util import atomic
from polysem.util.checks import (
    BATCH_MAX,
    COUNT_MAX,
    check_bool,
    check_class_list,
    check_int,
    check_path,
    check_real,
    check_text,
)
from polysem.util.images import ImageRecord, ImageRecords, pillow_max_pixels
from polysem.util.imports import code_folder
from polysem.util.progress import progress_bar
from polysem.version import __version__

__all__ = ["DEFAULT_LAYER", "DEFAULT_MODEL", "PROBE_TRIES", "WORKER_PRELOAD", "WORKER_START_ENV", "IngestSummary", "ingest", "probe_model", "stored_ids", "worker_context"]

DEFAULT_MODEL = "resnet50"
DEFAULT_LAYER = "layer4.2.conv3"


@dataclass
class IngestSummary:
    store: Path
    split: str
    n_listed: int
    n_already: int
    n_written: int = 0
    n_errors: int = 0
    parts: int = 0
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    errors: list[str] = field(default_factory=list)


def ingest(
    store: Store | str | os.PathLike | None,
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    model: str | None = None,
    weights: str | None = None,
    layer: str | None = None,
    transform: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    limit: int | None = None,
    classes: list[int] | None = None,
    rows_per_part: int = 4096,
    progress: bool = True,
    compact: bool = True,
    max_pixels: int | None = None,
    decode: str | None = None,
    rank_timeout: float = DEFAULT_RANK_TIMEOUT,
) -> IngestSummary:
    """Ingest DATA_DIR/SPLIT into the store. Returns what this process wrote.

    model/weights/layer/transform default to what the store recorded, or, for a
    new store, to resnet50 / imagenet / layer4.2.conv3 / imagenet preprocessing.
    Everything is checked (options, classes and their logits, one image through the
    model) before the store is created or changed. num_workers defaults to
    `default_num_workers()` and, on a CPU, torch's threads to the cores the workers
    leave (`ingest.threads`); threads are restored afterwards. With `compact`, rank 0
    compacts the split's parts when the ingest succeeded (`query.compact`). An image of more
    than `max_pixels` pixels (default: Pillow's limit, Image.MAX_IMAGE_PIXELS) is not decoded but
    listed in ingest_errors, as is a FIFO, socket or device among the images. `decode`: pil (torchvision's
    PIL pipeline) or tensor (batched decode_jpeg and the default transform as tensors on the ingest's
    device; ingest/decode.py); default the store's, else pil. A store holds one decoder's rows only.
    `rank_timeout` (seconds, under torchrun): how long the ranks wait for a rank to join, and for a rank that
    gives no sign of life, before they stop naming it (ingest/ranks.py).
    """
    store = as_store(store)
    check_path("data_dir", data_dir)
    check_text("split", split)
    for name, value in (("model", model), ("weights", weights), ("layer", layer), ("transform", transform)):
        check_text(name, value, none=True)
    check_text("device", device)
    classes = check_class_list("classes", classes, none=True)
    check_bool("progress", progress)
    check_bool("compact", compact)
    batch_size, num_workers, limit, rows_per_part, threads = _check_options(batch_size, num_workers, limit,
                                                                            rows_per_part, threads)
    max_pixels = _check_max_pixels(max_pixels)
    rank_timeout = check_real("rank_timeout", rank_timeout, 0, RANK_TIMEOUT_MAX, low_open=True, hint=" seconds")
    check_decode(decode, transform)
    store.check_writable()
    existing = _existing_meta(store)
    check_decode(decode, transform or (existing or {}).get("transform"),  # the store's transform, if it has one
                 stores_transform=transform is None and existing is not None)
    model, weights, layer, transform, decode = _settings(existing, model, weights, layer, transform, decode)
    check_decode(decode, transform, stored=existing is not None)  # a received store's pair, too
    listing = list_split(data_dir, split, classes=classes, limit=limit)
    _check_listing(store, existing, listing, split)
    setup = _load_setup(store, existing, model, weights, layer, transform, listing, data_dir, max_pixels)
    job = _Job(store, split, listing, setup, batch_size, num_workers, threads, rows_per_part, progress, compact,
               max_pixels, decode, rank_timeout)
    run_device = resolve_device(device)
    if decode == "tensor":
        check_device_decoder(run_device)
    return _run_job(job, run_device)


def _existing_meta(store: Store) -> dict | None:
    """The store's recorded metadata; None for a new store. A store holding a link or a special file is
    refused first (`query.confine`): a FIFO catalog is no missing one."""
    check_tree(store.path)
    existing = store.meta(require_complete=False) if store.exists() else None
    if existing is not None and not meta_complete(existing):
        existing = None  # a first ingest stopped before its metadata was committed: start over
    return existing


def _check_listing(store: Store, existing: dict | None, listing: SplitListing, split: str) -> None:
    """A split of an existing store has the store's class folders, and comes from the folder it came from."""
    if existing is None:
        return
    known = store.run("class_list").column("folder").to_pylist()
    if known != listing.folders:
        raise DataError(
            f"class folders of {listing.root} differ from the store's {len(known)} classes "
            f"({_first_difference(known, listing.folders)}); use the same class folders in every split"
        )
    recorded_root = existing["dataset_roots"].get(split)
    if recorded_root is not None and recorded_root != str(listing.root):
        raise DataError(f"split '{split}' of this store was ingested from {recorded_root}, not {listing.root}; "
                        "ingest this folder as another `split`, or into another `store`")


@dataclass
class _Setup:
    """The model, layer and transform resolved and probed, and the store's class table."""

    resolved: ResolvedModel
    layer: str
    conv: torch.nn.Conv2d
    transform: ResolvedTransform
    class_table: pa.Table

    @property
    def logits(self) -> list[int]:
        """class id -> model output index"""
        return self.class_table.column("logit").to_pylist()


def _load_setup(store: Store, existing: dict | None, model: str, weights: str | None, layer: str,
                transform: str | None, listing: SplitListing, data_dir: str | os.PathLike,
                max_pixels: int | None = None) -> _Setup:
    if existing is not None:  # the store's own code: its folders are cleared before anything is imported
        model_root = code_folder(model, "model", existing.get("model_import_root"), store.path, store.trust_code)
        transform_root = code_folder(transform or DEFAULT_TRANSFORM, "transform",
                                     existing.get("transform_import_root"), store.path, store.trust_code)
    else:  # code the user names: from the current folder or PYTHONPATH, never from inside the store
        model_root = transform_root = None
    resolved = resolve_model(model, weights, import_root=model_root, store_dir=store.path)
    conv = resolve_layer(resolved.model, layer)
    image_transform = resolve_transform(transform, import_root=transform_root, store_dir=store.path)
    if existing is not None and existing["weights_sha256"] != resolved.weights_sha256:
        raise StoreMismatch(
            f"store {store.path} holds attributions of other weights ({existing['weights']}); "
            "use the same weights or another `store`"
        )
    with record_function("ingest.probe"):
        n_outputs = probe_model(resolved.model, conv, layer, image_transform.fn, listing, max_pixels)
    class_table = _class_table(store, existing, n_outputs, data_dir, listing, resolved)
    return _Setup(resolved, layer, conv, image_transform, class_table)


def _class_table(store: Store, existing: dict | None, n_outputs: int, data_dir: str | os.PathLike, listing: SplitListing,
                 resolved: ResolvedModel) -> pa.Table:
    """The store's classes, or, for a new store, the classes of the listing with their logits."""
    if existing is None:
        return pa.Table.from_pylist(
            class_rows(data_dir, listing.folders, n_outputs, resolved.model_spec), schema=layout.CLASSES)
    class_table = store.run("class_list")
    bad = [v for v in class_table.column("logit").to_pylist() if not 0 <= v < n_outputs]
    if bad:
        raise ModelError(f"the model now has {n_outputs} outputs but the store maps a class to logit {bad[0]}; "
                         "use the model the store was made with")
    return class_table


@dataclass
class _Job:
    """What one ingest writes, and how."""

    store: Store
    split: str
    listing: SplitListing
    setup: _Setup
    batch_size: int
    num_workers: int
    threads: int | None
    rows_per_part: int
    progress: bool
    compact: bool
    max_pixels: int | None = None  # the pixel limit; None: Pillow's
    decode: str = DEFAULT_DECODE  # pil or tensor (ingest/decode.py)
    rank_timeout: float = DEFAULT_RANK_TIMEOUT  # seconds (ingest/ranks.py)


def _run_job(job: _Job, run_device: torch.device) -> IngestSummary:
    """Every rank attributes its share of the images not yet stored; rank 0 creates the store first,
    holds the split's lock throughout, and compacts the split at the end."""
    store, split = job.store, job.split
    ranks = start_ranks(run_device, job.rank_timeout)  # all ranks join in time, or one line names who did not
    rank, world_size = ranks.rank, ranks.world_size
    lock = None
    try:
        lock = _prepare_on_rank0(job, ranks)
        stored = stored_ids(store.path, split)
        ranks.barrier("reading what is stored")  # every rank read the same `stored` before any rank writes
        records = job.listing.records
        todo = [r for r in records if r.image_id not in stored]  # unreadable ones are retried
        mine = todo[rank::world_size]
        summary = IngestSummary(store.path, split, len(records), len(records) - len(todo),
                                rank=rank, world_size=world_size, device=str(run_device))
        setup = job.setup
        with torch_threads(job.threads if job.threads is not None else default_threads(run_device, job.num_workers)):
            _run(setup.resolved.model.to(run_device), setup.conv,
                 loading(job.decode, mine, setup.transform.fn, setup.transform.import_root, job.max_pixels),
                 mine, setup.logits, split, store.path, rank, job.rows_per_part, job.batch_size, job.num_workers,
                 run_device, job.progress and rank == 0, summary)
        ranks.barrier("writing their shares")  # a rank still working is waited for; a silent one is named
        if world_size > 1 and rank == 0:  # report what all ranks wrote, not just this one
            summary.n_written = len(stored_ids(store.path, split)) - len(stored)
        if mine and not stored and summary.n_written == 0 and summary.n_errors == len(mine):
            raise DataError(f"none of the {len(mine)} images to ingest could be read (first: {summary.errors[0]}); "
                            "they are listed in ingest_errors; fix them and run this again")
        if job.compact and rank == 0:  # every rank has written its parts (barrier above); rank 0 holds the lock
            with record_function("ingest.compact"):
                compact_split(store.path, split)
        return summary
    except BaseException as error:
        ranks.failed(error)  # the other ranks stop at their next meeting, naming this rank and why
        raise
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock
        ranks.close()


def _prepare_on_rank0(job: _Job, ranks: Ranks):
    """Rank 0 creates or extends the store and takes the split's lock (returned); a failure there
    is raised on every rank, so no rank waits for a rank that gave up."""
    failure, lock = None, None
    if ranks.rank == 0:  # nothing before wrote anything; from here on the store is created or extended
        setup = job.setup
        try:
            with record_function("ingest.prepare_store"):  # the DuckDB catalog and the store's tables
                _prepare_store(job.store, setup.resolved, setup.layer, setup.conv, setup.transform,
                               setup.class_table, job.split, job.listing, job.decode)
            lock = lock_split(job.store.path, job.split)
        except PolysemError as error:
            failure = error
    failure = ranks.shared_from_rank0(failure, "rank 0 preparing the store")
    if failure is not None:
        if lock is not None:
            lock.close()
        raise failure
    return lock


ROWS_PER_PART_MAX = 2**20  # rows a part holds in memory before it is written (about 10 GB at ResNet-50's layer4)


def _check_options(batch_size: int, num_workers: int | None, limit: int | None, rows_per_part: int,
                   threads: int | None) -> tuple[int, int, int | None, int, int | None]:
    """The counts of an ingest, each in its range (README, Ingest), as ints: batch_size, num_workers (its
    default when None), limit, rows_per_part, threads. Workers and threads: at most 4 x the cores here."""
    cores = cores_per_process()
    most = f" (4 x the {cores} cores this process may use)"
    batch_size = check_int("batch_size", batch_size, 1, BATCH_MAX)
    num_workers = check_int("num_workers", num_workers, 0, 4 * cores, none=True,
                            hint=f"; 0 loads the images in this process, at most 4 x the {cores} cores here")
    limit = check_int("limit", limit, 1, COUNT_MAX, none=True, hint=" (images per class); omit it for all images")
    threads = check_int("threads", threads, 1, 4 * cores, none=True,
                        hint=f"{most}; omit it to choose from the cores")
    rows_per_part = check_int("rows_per_part", rows_per_part, 1, ROWS_PER_PART_MAX)
    num_workers = default_num_workers() if num_workers is None else num_workers
    return batch_size, num_workers, limit, rows_per_part, threads


def _check_max_pixels(max_pixels: int | None) -> int | None:
    """The pixel limit of this ingest: `max_pixels`, or Pillow's (None when Pillow's is turned off)."""
    if max_pixels is None:
        return pillow_max_pixels()
    return check_int("max_pixels", max_pixels, 1, COUNT_MAX,
                     hint=f" pixels; omit it for Pillow's limit ({pillow_max_pixels()})")


PROBE_TRIES = 8  # images tried before concluding that the split is unreadable


def probe_model(model: torch.nn.Module, conv: torch.nn.Conv2d, layer_name: str, transform, listing,
                max_pixels: int | None = None) -> int:
    """Run one image of the split through transform and model; return the number of outputs.

    Catches, before anything is written: a transform that gives no C x H x W tensor, a model
    that fails on it, a layer the forward pass never uses, an output that is not N x K logits.
    """
    from polysem.ingest.attribution import layer_probe

    errors = []
    for record in listing.records[:PROBE_TRIES]:
        _, image, error = ImageRecords([record], transform, max_pixels=max_pixels)[0]
        if error is not None:
            if error.startswith("transform returned"):
                raise ModelError(f"`transform` on {record.path}: {error}; it must return a C x H x W tensor")
            errors.append(f"{record.path}: {error}")
            continue
        if image.dim() != 3:
            raise ModelError(f"`transform` gave a tensor of shape {tuple(image.shape)} for {record.path}; "
                             "it must return C x H x W")
        try:
            with torch.no_grad(), layer_probe(conv) as seen:
                output = model(image.unsqueeze(0))
        except (Exception, SystemExit) as failure:
            raise ModelError(f"the model fails on {record.path} (input {tuple(image.shape)} from the transform): "
                             f"{type(failure).__name__}: {_first_line(failure)}; check `model`, `weights` and `transform`"
                             ) from failure
        if "output" not in seen:
            raise ModelError(f"layer '{layer_name}' never runs in the model's forward pass; choose a conv layer that "
                             "the forward pass uses")
        if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ModelError(f"the model returns {shape} for one image, not 1 x K logits; make it return a "
                             "batch x classes tensor")
        return int(output.shape[1])
    raise DataError(f"the first {len(errors)} images of {listing.root} cannot be read ({errors[0]}); "
                    "fix or remove them")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _settings(existing, model, weights, layer, transform, decode):
    if existing is None:
        return model or DEFAULT_MODEL, weights, layer or DEFAULT_LAYER, transform, decode or DEFAULT_DECODE
    for option, given, recorded in (("model", model, existing["model"]), ("layer", layer, existing["layer"]),
                                    ("transform", transform, existing["transform"]),
                                    ("decode", decode, recorded_decode(existing))):
        if given is not None and given != recorded:
            why = ""
            if option == "decode":  # the pixels differ: a store's rows must all come from one decoder
                why = " (a store made before `decode` existed was decoded with pil)" if "decode" not in existing \
                    else " (one decoder per store: their pixels differ)"
            raise StoreMismatch(
                f"the store holds `{option}`={recorded}{why}, not {given}; omit `{option}` or use another `store`"
            )
    return (existing["model"], weights or existing["weights"], existing["layer"], existing["transform"],
            recorded_decode(existing))


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference: class {i} is '{x}' in the store, '{y}' here"
    return f"{len(a)} classes in the store, {len(b)} here"


def _prepare_store(store, resolved, layer_name, conv, image_transform, class_table, split, listing,
                   decode=DEFAULT_DECODE) -> None:
    """Create the store on first ingest and record the split's dataset root, in one transaction.

    Creation is serialised by a file lock, so two first ingests (say train and val at once)
    neither write the tables twice nor lose each other's dataset root. The Parquet tables are
    written before the metadata is committed: a store whose metadata is incomplete counts as
    not created, and the next ingest completes it.
    """
    import fcntl

    store.create_directory()
    with open_lock(store.path, store.path / ".create.lock") as creating:
        fcntl.flock(creating, fcntl.LOCK_EX)
        meta = store.meta(require_complete=False) if store.exists() else {}
        wanted = {
            "schema_version": SCHEMA_VERSION,
            "model": resolved.model_spec,
            "model_import_root": resolved.import_root,
            "weights": resolved.weights_spec,
            "weights_sha256": resolved.weights_sha256,
            "layer": layer_name,
            "layer_shape": layer_shape(conv),
            "transform": image_transform.spec,
            "transform_import_root": image_transform.import_root,
            "decode": decode,
            "polysem_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if meta_complete(meta):  # another ingest created it since we looked
            for key, recorded in (*((key, meta[key]) for key in ("model", "weights_sha256", "layer", "transform")),
                                  ("decode", recorded_decode(meta))):
                if recorded != wanted[key]:
                    raise StoreMismatch(f"the store was just created by another ingest with {key} {recorded}, "
                                        f"not {wanted[key]}; use the same settings or another `store`")
        else:
            layout.write_schema_files(store.path)
            atomic.write_atomic(class_table, store.path / "classes.parquet")
            weight = conv.weight.detach().cpu().flatten(1).numpy()
            bias = conv.bias.detach().cpu().numpy() if conv.bias is not None else [None] * len(weight)
            atomic.write_atomic(
                pa.Table.from_arrays(
                    [pa.array(np.arange(len(weight)), pa.int32()), list_column(weight), pa.array(bias, pa.float32())],
                    schema=layout.LAYER_WEIGHTS,
                ),
                store.path / "layer_weights.parquet",
            )
        with store.transaction(create=True) as tx:
            if not meta_complete(read_meta(tx.conn)):
                write_meta(tx.conn, wanted)
            recorded = read_meta(tx.conn)["dataset_roots"].get(split)
            if recorded is not None and recorded != str(listing.root):
                raise DataError(f"split '{split}' of this store was ingested from {recorded}, not {listing.root}; "
                                "ingest this folder as another `split`, or into another `store`")
            write_meta(tx.conn, {dataset_root_key(split): str(listing.root)})


def stored_ids(store_path: Path, split: str) -> set[int]:
    """Ids of the split's images already in complete parts. Unreadable images are not among
    them: a later ingest tries them again (the file may have been repaired)."""
    if not any(layout.part_dir(store_path, "samples", split).glob("*.parquet")):
        return set()
    try:
        with duckdb.connect() as con:
            rows = run_statement(con, "parquet_image_ids",
                                 files=layout.part_glob(store_path, "samples", split)).fetchnumpy()["image_id"]
    except duckdb.Error as error:
        raise query_error(error, store_path) from error
    return set(rows.tolist())


# Whether `_run` overlaps its stages: one batch in flight on the device and parts written by a helper
# thread. False runs them one after the other (the loop before the overlap; the tests' reference run).
_OVERLAP = True


def _run(model, conv, load, records, logits, split, store_path, rank, rows_per_part, batch_size, num_workers,
         device, show_progress, summary) -> None:
    """Attribute each image to its class's logit (`logits[class_id]`) and write the rows; `load`: how the
    images become inputs (ingest/decode.py: the DataLoader's dataset and collate, then `finish` here).

    Input, compute and writing overlap (issue 17): the DataLoader's workers load ahead (`prefetch_factor`),
    one batch is in flight on the device while this process turns the batch before into rows
    (`_Lookahead`), and full parts are written by a helper thread (`PartWriter`). The rows, their order and
    the parts they fall into are those of the serial loop (`_OVERLAP` False)."""
    writer = PartWriter(store_path, split, rank, rows_per_part, background=_OVERLAP)
    loader = DataLoader(
        load.dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=load.collate_fn,
        pin_memory=device.type == "cuda",
        # `load.prefetch_factor` batches per worker are loaded ahead (ingest/decode.py says why its value).
        # Not persistent: an ingest is one pass over its images, so workers have no second epoch to serve.
        prefetch_factor=load.prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context=worker_context(num_workers),
    )
    # Rank 0 counts its own images only: every rank has its share, and a rate scaled by world_size
    # would be a guess; the label says so.
    label = f"ingest {split}" + (f" (rank 0 of {summary.world_size})" if summary.world_size > 1 else "")
    with progress_bar(label, len(records), show_progress) as advance:
        flow = _Lookahead(writer, records, logits, summary, advance, depth=1 if _OVERLAP else 0)
        try:
            # named ranges for torch.profiler (bench/ingest_profile.py: where the time goes); free without one
            batches = iter(loader)
            while True:
                with record_function("ingest.load_batch"):  # read, decode, transform, collate (or wait for workers)
                    loaded = next(batches, None)
                if loaded is None:
                    break
                groups, failures = load.finish(loaded, device)  # tensor: decode and transform on the device
                for index, message in failures:
                    flow.failed(index, message)
                for indices, images in groups:
                    flow.started(_Attributed(model, conv, [records[i] for i in indices], images, logits, device))
            flow.drain()
            with record_function("ingest.write"):
                writer.flush()  # the last part, and every part handed over before it, on disk
        except KeyboardInterrupt:
            flow.drain()  # the batch in flight is complete: keep it too
            writer.flush()  # keep the finished rows: the next run resumes after them
            raise KeyboardInterrupt("what was complete is stored; run the same command again to resume") from None
        except BaseException:
            writer.settle()  # the part being written is complete: let it land before the store is released
            raise
    summary.parts = writer.parts_written


class _Attributed:
    """One batch whose attribution has been started on `device`, its results on their way to host memory.

    On a GPU the constructor only queues work on the device's stream and returns: the images' copy (the
    DataLoader pinned them) and the targets' (pinned here), forward and backward (`attribute_batch`), and
    non-blocking copies of the small results (argmax and target logit, attributions, input sums) into
    pinned host buffers, after which an event is recorded; `columns()` waits for that event alone, not for
    the batches queued since. On a CPU every step runs when called and the results are the tensors
    themselves, as in the serial loop."""

    def __init__(self, model, conv, batch: list[ImageRecord], images: torch.Tensor, logits: list[int],
                 device: torch.device):
        self.batch = batch
        with record_function("ingest.host_to_device"):
            targets = _to_device(torch.tensor([logits[r.target] for r in batch]), device)
            images = images.to(device, non_blocking=True)
        result = attribute_batch(model, conv, images, targets)
        self.positions = result.positions
        with record_function("ingest.device_to_host"):
            outputs = (result.logits.argmax(1), result.logits.gather(1, targets.view(-1, 1)).squeeze(1),
                       result.attribution, result.input_sum)
            self.host = [_to_host(t) for t in outputs]
            self.ready = None
            if device.type == "cuda":
                self.ready = torch.cuda.Event()
                self.ready.record()

    def columns(self, class_of_logit: np.ndarray) -> dict[str, np.ndarray]:
        """The batch's rows as the writer's columns; waits for the batch's results on a GPU."""
        with record_function("ingest.device_to_host"):
            if self.ready is not None:
                self.ready.synchronize()
            predicted, target_logit, attribution, input_sum = (t.numpy() for t in self.host)
        known = predicted < len(class_of_logit)
        batch = self.batch
        return {
            "image_id": np.array([r.image_id for r in batch], dtype=np.int64),
            "path": np.array([r.path for r in batch], dtype=object),
            "target": np.array([r.target for r in batch], dtype=np.int32),
            "prediction": np.where(known, class_of_logit[np.where(known, predicted, 0)], -1).astype(np.int32),
            "predicted_logit": predicted.astype(np.int32),
            "target_logit": target_logit,
            "attribution": attribution,
            "input_sum": input_sum,
            "positions": np.full(len(batch), self.positions, dtype=np.int32),
        }


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; on a GPU from pinned memory without waiting (a copy from pageable memory
    would wait for the batch before to finish on the device)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor's copy in a fresh pinned host buffer, started without waiting (CUDA); on other
    devices `.cpu()` (on a CPU the tensor itself). Fresh buffers: the writer keeps the arrays it is given."""
    if tensor.device.type == "cuda":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)
    return tensor.cpu()


class _Lookahead:
    """Keeps `depth` batches (1, or 0 for the serial loop) in flight: a batch's rows go to the writer once
    the next batch has been started, so that on a GPU the device computes while this process writes rows.

    Rows and error rows reach the writer in the serial loop's order (a loaded batch's unreadable images,
    then its rows), so the parts hold the same rows in the same order whatever the depth."""

    def __init__(self, writer: PartWriter, records: list[ImageRecord], logits: list[int], summary: IngestSummary,
                 advance, depth: int):
        self.writer, self.records, self.summary, self.advance, self.depth = writer, records, summary, advance, depth
        self.class_of_logit = np.full(max(logits) + 1, -1, dtype=np.int32)
        self.class_of_logit[logits] = np.arange(len(logits), dtype=np.int32)
        self.pending: _Attributed | None = None
        self.failures: list[tuple[int, str]] = []  # loaded since `pending` was started: written after it

    def failed(self, index: int, message: str) -> None:
        self.failures.append((index, message))

    def started(self, batch: _Attributed) -> None:
        self.drain()  # the batch before, and the failures loaded after it
        self.pending = batch
        if self.depth == 0:
            self.drain()

    def drain(self) -> None:
        """Write the batch in flight (waiting for it) and the failures loaded since, in that order."""
        pending, self.pending = self.pending, None  # taken first: an interrupted drain never writes it twice
        if pending is not None:
            columns = pending.columns(self.class_of_logit)
            with record_function("ingest.write"):  # buffered; a full part goes to the writer's thread
                self.writer.add_samples(**columns)
            self.summary.n_written += len(pending.batch)
            self.advance(len(pending.batch))
        failures, self.failures = self.failures, []
        for index, message in failures:
            record = self.records[index]
            self.writer.add_error(record.image_id, record.path, record.target, message)
            self.summary.n_errors += 1
            if len(self.summary.errors) < 5:
                self.summary.errors.append(f"{record.path}: {message}")
        if failures:
            self.advance(len(failures))


WORKER_PRELOAD = ["torch", "torchvision.transforms", "PIL.Image", "polysem.util.images"]
WORKER_START_ENV = "POLYSEM_WORKER_START"  # fork, forkserver (default) or spawn


def worker_context(num_workers: int):
    """How DataLoader workers start: by default forked from a fork server that imported torch and
    nothing else (POLYSEM_WORKER_START=fork|spawn chooses another way).

    Forking the ingest process itself, which holds CUDA, DuckDB and OpenMP threads, crashed its
    workers on a GPU machine (a segmentation fault); spawning fresh ones worked but each
    imported torch anew, costing tens of seconds per ingest. The fork server is a clean process,
    started once, and its children start with torch already imported. Like spawn, it runs a
    script's main module again in the workers: guard scripts with `if __name__ == "__main__":`.
    """
    if num_workers == 0:
        return None
    import multiprocessing

    method = os.environ.get(WORKER_START_ENV, "forkserver")
    if method not in ("fork", "forkserver", "spawn"):
        raise DataError(f"{WORKER_START_ENV}={method} is not a start method; use fork, forkserver or spawn")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(WORKER_PRELOAD)
    return context
