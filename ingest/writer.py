"""Buffers per-image results and writes them to the store as atomic Parquet parts, in a helper thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
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


class _InTurn:
    """Runs jobs in a helper thread, one at a time and in the order given: `start(job)` first waits for the
    job before it. A job's failure is kept and raised, as the exception the job raised, by the next `check`
    (if the job has finished), `start` or `wait`.

    The waits poll an Event rather than join the thread, so that Ctrl-C reaches the caller while it waits
    (query/store.py waits the same way). The thread is a daemon: a process that is stopped (a second Ctrl-C,
    an exit) does not wait for a write; its temporary file is never a part (`atomic.write_atomic`) and the
    next write to the store sweeps it."""

    def __init__(self, name: str):
        self.name = name
        self._done: threading.Event | None = None
        self._failure: BaseException | None = None

    def start(self, job: Callable[[], None]) -> None:
        self.wait()
        done = threading.Event()

        def run() -> None:
            try:
                job()
            except BaseException as error:  # noqa: BLE001  kept for the caller's thread, which raises it
                self._failure = error
            finally:
                done.set()

        self._done = done
        threading.Thread(target=run, name=self.name, daemon=True).start()

    def check(self) -> None:
        """Raise the failure of the job in hand if it has failed already; never waits."""
        if self._done is not None and self._done.is_set():
            self.wait()

    def wait(self) -> None:
        """Until the job in hand has finished; then raise its failure, if it failed."""
        if self._done is not None:
            while not self._done.wait(0.05):
                pass
            self._done = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


class PartWriter:
    """Collects rows of one split and writes them as part files of `rows_per_part` rows.

    A full part is encoded and written by a helper thread while the caller computes the next rows (pyarrow
    releases the GIL while it encodes, compresses and writes). One part at a time: handing over a part first
    waits until the one before is on disk, so at most two parts' rows are in memory, the one being filled
    and the one being written (2 x `rows_per_part` rows: about 80 MB at the default 4,096 rows of ResNet-50's
    layer4, whose rows are 10 kB). A failed write (a full disk) is raised by the next `add_samples`,
    `add_error` or `flush`, as the exception it raised (`DiskFull` with its one-line message). `flush` hands
    over what is buffered and waits: when it returns, every row added is in a complete part. Each part
    appears whole or not at all (`atomic.write_atomic`), also when the process is killed while writing it.
    `background=False` writes in the caller's thread: the serial loop, the reference the overlap is tested against.
    """

    def __init__(self, store: Path, split: str, rank: int, rows_per_part: int, *, background: bool = True,
                 layer: str | None = None):
        self.store, self.split, self.rank, self.layer = store, split, rank, layer
        self.rows_per_part = rows_per_part
        self.background = background
        self._samples: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._errors: list[tuple[int, str, int | None, str]] = []
        self._writes = _InTurn(f"polysem-parts-{split}")
        self.parts_written = 0

    def add_samples(self, **columns: np.ndarray) -> None:
        """Buffer one batch's rows (the arrays are kept as they are: do not change them afterwards)."""
        self._writes.check()
        self._samples.append(columns)
        self._buffered += len(columns["image_id"])
        if self._buffered >= self.rows_per_part:
            self._hand_over()

    def add_error(self, image_id: int, path: str, target: int | None, message: str) -> None:
        self._writes.check()
        self._errors.append((image_id, path, target, message))

    def flush(self) -> None:
        """Write what is buffered and wait for every write handed over; raises a write's failure."""
        self._hand_over()
        self._writes.wait()

    def settle(self) -> None:
        """Wait for the write in hand, keeping quiet about its failure: for a caller that is failing already.
        What is buffered is dropped."""
        self._samples, self._buffered, self._errors = [], 0, []
        with contextlib.suppress(Exception):  # the caller raises its own failure, which came first
            self._writes.wait()

    def _hand_over(self) -> None:
        """The buffered rows (and the error rows gathered so far) become one write job: the samples part,
        then the errors part, as one call of `_write`, in the helper thread or here."""
        samples, errors = self._samples, self._errors
        self._samples, self._buffered, self._errors = [], 0, []
        if not samples and not errors:
            return
        failed_at = datetime.now(timezone.utc).replace(tzinfo=None)

        def job() -> None:
            self._write(samples, errors, failed_at)

        if self.background:
            self._writes.start(job)
        else:
            job()

    def _write(self, samples: list[dict[str, np.ndarray]], errors: list[tuple[int, str, int | None, str]],
               failed_at: datetime) -> None:
        if samples:
            chunk = {key: np.concatenate([c[key] for c in samples]) for key in samples[0]}
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
            atomic.write_atomic(table, layout.new_part_path(self.store, "samples", self.split, self.rank,
                                                                   self.layer))
            self.parts_written += 1
        if errors:
            ids, paths, targets, messages = zip(*errors, strict=True)
            table = pa.table(
                {
                    "image_id": pa.array(ids, pa.int64()),
                    "split": pa.array([self.split] * len(ids), pa.string()),
                    "path": pa.array(paths, pa.string()),
                    "target": pa.array(targets, pa.int32()),
                    "error": pa.array(messages, pa.string()),
                    "failed_at": pa.array([failed_at] * len(ids), pa.timestamp("us")),
                },
                schema=layout.INGEST_ERRORS,
            )
            atomic.write_atomic(table, layout.new_part_path(self.store, "ingest_errors", self.split, self.rank))
