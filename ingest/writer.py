"""Buffers per-image results and writes them to the store as atomic Parquet parts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from polysem.query import layout
from polysem.util import atomic

__all__ = ["PartWriter", "list_column"]


def list_column(matrix: np.ndarray) -> pa.Array:
    """An N x D float32 matrix as a Parquet-friendly list<float> column."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = matrix.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))


class PartWriter:
    """Collects rows of one split and flushes them as part files of `rows_per_part` rows."""

    def __init__(self, store: Path, split: str, rank: int, rows_per_part: int):
        self.store, self.split, self.rank = store, split, rank
        self.rows_per_part = rows_per_part
        self._samples: list[dict[str, np.ndarray]] = []
        self._errors: list[tuple[int, str, int, str]] = []
        self.parts_written = 0

    @property
    def buffered(self) -> int:
        return sum(len(chunk["image_id"]) for chunk in self._samples)

    def add_samples(self, **columns: np.ndarray) -> None:
        self._samples.append(columns)
        if self.buffered >= self.rows_per_part:
            self.flush()

    def add_error(self, image_id: int, path: str, target: int, message: str) -> None:
        self._errors.append((image_id, path, target, message))

    def flush(self) -> None:
        if self._samples:
            chunk = {key: np.concatenate([c[key] for c in self._samples]) for key in self._samples[0]}
            n = len(chunk["image_id"])
            table = pa.Table.from_arrays(
                [
                    pa.array(chunk["image_id"], pa.int64()),
                    pa.array([self.split] * n, pa.string()),
                    pa.array(chunk["path"], pa.string()),
                    pa.array(chunk["target"], pa.int32()),
                    pa.array(chunk["prediction"], pa.int32(), mask=chunk["prediction"] < 0),
                    pa.array(chunk["predicted_logit"], pa.int32()),
                    pa.array(chunk["target_logit"], pa.float32()),
                    list_column(chunk["attribution"]),
                    list_column(chunk["input_sum"]),
                    pa.array(chunk["positions"], pa.int32()),
                    pa.nulls(n, pa.float64()),  # positive_sum: compaction computes it, in SQL
                ],
                schema=layout.SAMPLES,
            )
            atomic.write_atomic(table, layout.new_part_path(self.store, "samples", self.split, self.rank))
            self._samples = []
            self.parts_written += 1
        if self._errors:
            ids, paths, targets, messages = zip(*self._errors, strict=True)
            table = pa.table(
                {
                    "image_id": pa.array(ids, pa.int64()),
                    "split": pa.array([self.split] * len(ids), pa.string()),
                    "path": pa.array(paths, pa.string()),
                    "target": pa.array(targets, pa.int32()),
                    "error": pa.array(messages, pa.string()),
                    "failed_at": pa.array([datetime.now(timezone.utc).replace(tzinfo=None)] * len(ids), pa.timestamp("us")),
                },
                schema=layout.INGEST_ERRORS,
            )
            atomic.write_atomic(table, layout.new_part_path(self.store, "ingest_errors", self.split, self.rank))
            self._errors = []
