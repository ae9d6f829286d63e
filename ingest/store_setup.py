"""Creating the store on a first ingest, under its creation lock, and recording each split's folder."""

from __future__ import annotations

import fcntl
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
from torch.profiler import record_function

from polysem.errors import DataError, PolysemError, StoreMismatch
from polysem.ingest.job import IngestJob
from polysem.ingest.models import layer_shape
from polysem.ingest.ranks import Ranks
from polysem.ingest.writer import list_column
from polysem.query import layout
from polysem.query.confine import open_lock
from polysem.query.meta import (
    SCHEMA_VERSION,
    dataset_root_key,
    layer_shape_key,
    meta_complete,
    read_meta,
    recorded_decode,
    recorded_target,
    write_meta,
)
from polysem.query.split_lock import lock_split
from polysem.util import atomic
from polysem.version import __version__

__all__ = ["prepare_on_rank0", "prepare_store"]


def prepare_on_rank0(job: IngestJob, ranks: Ranks):
    """Rank 0 creates or extends the store and takes the split's lock (returned); a failure there
    is raised on every rank, so no rank waits for a rank that gave up."""
    failure, lock = None, None
    if ranks.rank == 0:  # nothing before wrote anything; from here on the store is created or extended
        try:
            with record_function("ingest.prepare_store"):  # the DuckDB catalog and the store's tables
                prepare_store(job)
            lock = lock_split(job.store.path, job.split)
        except PolysemError as error:
            failure = error
    failure = ranks.shared_from_rank0(failure, "rank 0 preparing the store")
    if failure is not None:
        if lock is not None:
            lock.close()
        raise failure
    return lock


def prepare_store(job: IngestJob) -> None:
    """Create the store on first ingest and record the split's dataset root, in one transaction.

    Creation is serialised by a file lock, so two first ingests (say train and val at once)
    neither write the tables twice nor lose each other's dataset root. The Parquet tables are
    written before the metadata is committed: a store whose metadata is incomplete counts as
    not created, and the next ingest completes it.
    """
    store, setup, split, listing = job.store, job.setup, job.split, job.listing
    resolved, class_table = setup.resolved, setup.class_table
    first = setup.layers[0]
    store.create_directory()
    with open_lock(store.path, store.path / ".create.lock") as creating:
        fcntl.flock(creating, fcntl.LOCK_EX)
        meta = store.meta(require_complete=False, any_layer=True) if store.exists() else {}
        wanted = {
            "schema_version": SCHEMA_VERSION,
            "model": resolved.model_spec,
            "model_import_root": resolved.import_root,
            "weights": resolved.weights_spec,
            "weights_sha256": resolved.weights_sha256,
            "layer": first.name,
            "layer_shape": layer_shape(first.module, first.positions),
            "transform": setup.transform.spec,
            "transform_import_root": setup.transform.import_root,
            "decode": job.decode,
            "target": job.target,
            "polysem_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if meta_complete(meta):  # created before, or by another ingest since we looked
            for key, recorded in (*((key, meta[key]) for key in ("model", "weights_sha256", "transform")),
                                  ("decode", recorded_decode(meta)), ("target", recorded_target(meta))):
                if recorded != wanted[key]:
                    raise StoreMismatch(f"the store was just created by another ingest with {key} {recorded}, "
                                        f"not {wanted[key]}; use the same settings or another `store`")
            first_name = meta["layer"]
        else:
            layout.write_schema_files(store.path)
            atomic.write_atomic(class_table, store.path / "classes.parquet")
            first_name = first.name
        stored = meta.get("layers") or {} if meta_complete(meta) else {}
        added = {}  # layers this ingest adds to the store: their shapes, recorded with the split's root
        for layer in setup.layers:
            shape = layer_shape(layer.module, layer.positions)
            if layer.name in stored:
                if stored[layer.name] != shape:
                    raise StoreMismatch(f"the store holds layer {layer.name} of shape {stored[layer.name]}, not {shape}; "
                                        "use the model the store was made with")
                continue
            weights = layout.weights_file(store.path, layer.name, first_name)
            atomic.write_atomic(_weight_table(layer.module), weights)  # before its key: a key always has its file
            if layer.name != first_name:
                added[layer_shape_key(layer.name)] = shape
        with store.transaction(create=True) as tx:
            if not meta_complete(read_meta(tx.conn)):
                write_meta(tx.conn, wanted)
            recorded_shapes = read_meta(tx.conn)["layers"]
            for key, shape in added.items():
                name = key.partition(":")[2]
                if name in recorded_shapes and recorded_shapes[name] != shape:  # another ingest added it since
                    raise StoreMismatch(f"another ingest just added layer {name} of shape {recorded_shapes[name]}, "
                                        f"not {shape}; use the model the store was made with")
                write_meta(tx.conn, {key: shape})
            recorded = read_meta(tx.conn)["dataset_roots"].get(split)
            if recorded is not None and recorded != str(listing.root):
                raise DataError(f"split '{split}' of this store was ingested from {recorded}, not {listing.root}; "
                                "ingest this folder as another `split`, or into another `store`")
            write_meta(tx.conn, {dataset_root_key(split): str(listing.root)})


def _weight_table(module) -> pa.Table:
    """A layer's weight, one row per output unit, flattened like its input sums; its bias or NULL."""
    weight = module.weight.detach().cpu().flatten(1).numpy()
    bias = module.bias.detach().cpu().numpy() if module.bias is not None else [None] * len(weight)
    return pa.Table.from_arrays(
        [pa.array(np.arange(len(weight)), pa.int32()), list_column(weight), pa.array(bias, pa.float32())],
        schema=layout.LAYER_WEIGHTS,
    )
