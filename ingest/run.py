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
import torch.distributed as dist
from torch.utils.data import DataLoader

import polysem
from polysem.ingest.attribution import attribute_batch
from polysem.ingest.dataset import ImageRecords, class_rows, collate, list_split
from polysem.ingest.models import layer_shape, resolve_device, resolve_layer, resolve_model, resolve_transform
from polysem.ingest.progress import progress_bar
from polysem.ingest.writer import PartWriter, list_column
from polysem.errors import DataError, PolysemError, StoreBusy, StoreMismatch
from polysem.query import Store, layout
from polysem.query.store import query_error, read_meta, write_meta

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
    num_workers: int = 0,
    device: str = "auto",
    limit: int | None = None,
    classes: list[int] | None = None,
    rows_per_part: int = 4096,
    progress: bool = True,
) -> IngestSummary:
    """Ingest DATA_DIR/SPLIT into the store. Returns what this process wrote.

    model/weights/layer/transform default to what the store recorded, or, for a
    new store, to resnet50 / imagenet / layer4.2.conv3 / imagenet preprocessing.
    """
    store = store if isinstance(store, Store) else Store(store)
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    store.check_writable()
    existing = store.meta() if store.exists() else None
    if existing is not None and "model" not in existing:
        existing = None  # a first ingest stopped before recording anything: start over
    model, weights, layer, transform = _settings(existing, model, weights, layer, transform)

    listing = list_split(data_dir, split, classes=classes, limit=limit)
    if existing is not None:
        known = [row["folder"] for row in store.table("SELECT folder FROM classes ORDER BY class_id").to_pylist()]
        if known != listing.folders:
            raise DataError(
                f"class folders of {listing.root} differ from the store's {len(known)} classes "
                f"(first difference: {_first_difference(known, listing.folders)}); use the same class folders in every split"
            )
    resolved = resolve_model(model, weights)
    conv = resolve_layer(resolved.model, layer)
    image_transform, transform_spec = resolve_transform(transform)
    if existing is not None and existing["weights_sha256"] != resolved.weights_sha256:
        raise StoreMismatch(
            f"store {store.path} holds attributions of other weights ({existing['weights']}); "
            "use the same weights or another --store"
        )

    rank, world_size, own_group = _init_distributed()
    run_device = resolve_device(device)
    lock = None
    try:
        failure = None
        if rank == 0:
            try:
                _prepare_store(store, existing, resolved, layer, conv, transform_spec, data_dir, split, listing)
                lock = _lock_split(store.path, split)
            except PolysemError as error:
                failure = error
        failure = _shared_from_rank0(failure, world_size)  # so no rank waits for a rank that gave up
        if failure is not None:
            raise failure
        stored = stored_ids(store.path, split, ("samples",))
        samples_before = len(stored)
        done = stored | stored_ids(store.path, split, ("ingest_errors",))
        _barrier(world_size)  # every rank read the same `done` before any rank writes
        todo = [r for r in listing.records if r.image_id not in done]
        mine = todo[rank::world_size]
        summary = IngestSummary(store.path, split, len(listing.records), len(listing.records) - len(todo),
                                rank=rank, world_size=world_size, device=str(run_device))
        _run(resolved.model.to(run_device), conv, image_transform, mine, split, store.path, rank,
             rows_per_part, batch_size, num_workers, run_device, progress and rank == 0, summary)
        _barrier(world_size)
        if world_size > 1 and rank == 0:  # report what all ranks wrote, not just this one
            summary.n_written = len(stored_ids(store.path, split, ("samples",))) - samples_before
        return summary
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock
        if own_group:
            dist.destroy_process_group()


def _settings(existing, model, weights, layer, transform):
    if existing is None:
        return model or DEFAULT_MODEL, weights, layer or DEFAULT_LAYER, transform
    for option, given, recorded in (("--model", model, existing["model"]), ("--layer", layer, existing["layer"]),
                                    ("--transform", transform, existing["transform"])):
        if given is not None and given != recorded:
            raise StoreMismatch(
                f"the store holds {option} {recorded}, not {given}; omit {option} or use another --store"
            )
    return existing["model"], weights or existing["weights"], existing["layer"], existing["transform"]


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"class {i} is '{x}' in the store, '{y}' here"
    return f"{len(a)} classes in the store, {len(b)} here"


def _prepare_store(store, existing, resolved, layer_name, conv, transform_spec, data_dir, split, listing) -> None:
    """Create the store on first ingest; record the split's dataset root.

    The Parquet tables are written before the catalog is opened, since its views read them.
    """
    if existing is None:
        store.check_writable()
        layout.write_schema_files(store.path)
        layout.write_atomic(
            pa.Table.from_pylist(class_rows(data_dir, listing.folders), schema=layout.CLASSES),
            store.path / "classes.parquet",
        )
        weight = conv.weight.detach().cpu().flatten(1).numpy()
        bias = conv.bias.detach().cpu().numpy() if conv.bias is not None else [None] * len(weight)
        layout.write_atomic(
            pa.Table.from_arrays(
                [pa.array(np.arange(len(weight)), pa.int32()), list_column(weight), pa.array(bias, pa.float32())],
                schema=layout.LAYER_WEIGHTS,
            ),
            store.path / "layer_weights.parquet",
        )
    with store.connect(write=True) as conn:
        if existing is None:
            write_meta(conn, {
                "model": resolved.model_spec,
                "weights": resolved.weights_spec,
                "weights_sha256": resolved.weights_sha256,
                "layer": layer_name,
                "layer_shape": layer_shape(conv),
                "transform": transform_spec,
                "dataset_roots": {},
                "polysem_version": polysem.__version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
        roots = read_meta(conn).get("dataset_roots", {})
        roots[split] = str(listing.root)
        write_meta(conn, {"dataset_roots": roots})


def _lock_split(store_path: Path, split: str):
    """Hold an exclusive lock on the split for this ingest: two ingests of one split would both
    see the same images as missing and store them twice."""
    import fcntl

    folder = layout.part_dir(store_path, "samples", split)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".ingest.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreBusy(f"another ingest of split '{split}' into {store_path} is running; wait for it, "
                        "or stop it and run this again to resume") from None
    return handle


def stored_ids(store_path: Path, split: str, tables=("samples", "ingest_errors")) -> set[int]:
    """Ids of the split's images already in complete parts (by default: stored or unreadable)."""
    ids: set[int] = set()
    for table in tables:
        if any(layout.part_dir(store_path, table, split).glob("*.parquet")):
            try:
                rows = duckdb.execute(
                    "SELECT image_id FROM read_parquet(?)", [layout.part_glob(store_path, table, split)]
                ).fetchnumpy()["image_id"]
            except duckdb.Error as error:
                raise query_error(error, store_path) from error
            ids.update(rows.tolist())
    return ids


def _run(model, conv, transform, records, split, store_path, rank, rows_per_part, batch_size, num_workers,
         device, show_progress, summary) -> None:
    writer = PartWriter(store_path, split, rank, rows_per_part)
    loader = DataLoader(
        ImageRecords(records, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    try:
        with progress_bar(f"ingest {split}", len(records) * summary.world_size, show_progress) as advance:
            for indices, images, failures in loader:
                for index, message in failures:
                    record = records[index]
                    writer.add_error(record.image_id, record.path, record.target, message)
                    summary.n_errors += 1
                    if len(summary.errors) < 5:
                        summary.errors.append(f"{record.path}: {message}")
                if indices:
                    batch = [records[i] for i in indices]
                    targets = torch.tensor([r.target for r in batch], device=device)
                    result = attribute_batch(model, conv, images.to(device, non_blocking=True), targets)
                    logits = result.logits
                    writer.add_samples(
                        image_id=np.array([r.image_id for r in batch], dtype=np.int64),
                        path=np.array([r.path for r in batch], dtype=object),
                        target=np.array([r.target for r in batch], dtype=np.int32),
                        prediction=logits.argmax(1).cpu().numpy().astype(np.int32),
                        target_logit=logits.gather(1, targets.view(-1, 1)).squeeze(1).cpu().numpy(),
                        attribution=result.attribution.cpu().numpy(),
                        input_sum=result.input_sum.cpu().numpy(),
                        positions=np.full(len(batch), result.positions, dtype=np.int32),
                    )
                    summary.n_written += len(batch)
                advance((len(indices) + len(failures)) * summary.world_size)
    except KeyboardInterrupt:
        writer.flush()  # keep the finished rows: the next run resumes after them
        raise
    writer.flush()
    summary.parts = writer.parts_written


def _init_distributed() -> tuple[int, int, bool]:
    """(rank, world_size, whether we created the process group). torchrun sets the env."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _shared_from_rank0(value, world_size: int):
    """Rank 0's value on every rank (a barrier as well)."""
    if world_size <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
