"""Synthetic stores for the benchmarks, written straight in the store's Parquet format.

Every table is built by column name against `query.layout`'s schemas (SAMPLES, CLASSES,
LAYER_WEIGHTS), so a column added to the store makes these builders fail loudly (and
tests/test_bench.py with them) instead of writing a store polysem cannot read. Not a
benchmark itself: `make bench` and tests/test_bench.py run the scripts next to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from polysem.ingest.writer import list_column
from polysem.query import Store, layout
from polysem.query.meta import SCHEMA_VERSION, meta_complete, read_meta, write_meta

from polysem.util import atomic


def start_store(path: Path, classes: int, weights: np.ndarray) -> None:
    """A new store folder with its schema files, `classes` (class i on logit i) and layer weights (C_l x C_{l-1})."""
    path.mkdir(parents=True)
    layout.write_schema_files(path)
    atomic.write_atomic(pa.Table.from_pydict({
        "class_id": np.arange(classes, dtype=np.int32),
        "folder": [f"n{c:08d}" for c in range(classes)],
        "name": [f"class {c}" for c in range(classes)],
        "wnid": pa.nulls(classes, pa.string()),
        "logit": np.arange(classes, dtype=np.int32),
    }, schema=layout.CLASSES), path / "classes.parquet")
    atomic.write_atomic(pa.Table.from_pydict({
        "channel": np.arange(len(weights), dtype=np.int32),
        "weight": list_column(weights.astype(np.float32)),
        "bias": pa.nulls(len(weights), pa.float32()),
    }, schema=layout.LAYER_WEIGHTS), path / "layer_weights.parquet")


def write_part(path: Path, ids: np.ndarray, targets: np.ndarray, attribution: np.ndarray, input_sum: np.ndarray,
               target_logit: np.ndarray, rank: int = 0, split: str = "train", positions: int = 49) -> None:
    """One ingest part of `samples`: every image predicted as its own class (logit = class id)."""
    n = len(ids)
    table = pa.Table.from_pydict({
        "image_id": np.asarray(ids, np.int64),
        "split": [split] * n,
        "path": [f"img{i}.JPEG" for i in ids],
        "target": np.asarray(targets, np.int32),
        "prediction": np.asarray(targets, np.int32),
        "predicted_logit": np.asarray(targets, np.int32),
        "target_logit": np.asarray(target_logit, np.float32),
        "attribution": list_column(attribution.astype(np.float32)),
        "input_sum": list_column(input_sum.astype(np.float32)),
        "positions": np.full(n, positions, np.int32),
        "positive_sum": pa.nulls(n, pa.float64()),  # as ingest: compaction fills it
    }, schema=layout.SAMPLES)
    atomic.write_atomic(table, layout.new_part_path(path, "samples", split, rank))


def finish_store(path: Path, channels: int, inputs: int) -> Store:
    """The catalog and the metadata a first ingest writes, for a 1x1 layer of `channels` x `inputs`."""
    store = Store(path)
    with store.connect(write=True, create=True) as conn:  # as the first ingest: the store is not created yet
        write_meta(conn, {"schema_version": SCHEMA_VERSION, "model": "synthetic", "weights": "synthetic",
                          "weights_sha256": "0" * 64, "layer": "synthetic",
                          "layer_shape": {"out_channels": channels, "in_channels": inputs, "kernel_size": [1, 1],
                                          "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "bias": False},
                          "transform": "synthetic", "polysem_version": "bench", "created_at": "now"})
        missing = not meta_complete(read_meta(conn))
    if missing:
        raise RuntimeError("bench/_synthetic.py writes less metadata than query.meta.REQUIRED_META asks; add the keys")
    return store
