"""The batch pipeline: images loaded by a DataLoader, attributed on the device, written as Parquet parts.

Input, compute and writing overlap: the DataLoader's workers load ahead (`prefetch_factor`), one batch is
in flight on the device while this process turns the batch before into rows (`_Lookahead`), and full parts
are written by a helper thread (`PartWriter`). The rows, their order and the parts they fall into are those
of the serial loop (`OVERLAP` False).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader

from polysem.errors import DataError
from polysem.ingest.attribution import attribute_layers
from polysem.ingest.job import IngestJob, IngestSummary
from polysem.ingest.threads import WORKER_START_ENV
from polysem.ingest.writer import PartWriter
from polysem.util.images import ImageRecord
from polysem.util.progress import progress_bar

__all__ = ["OVERLAP", "WORKER_PRELOAD", "WORKER_START_ENV", "run_batches", "worker_context"]

# Whether `run_batches` overlaps its stages: one batch in flight on the device and parts written by a helper
# thread. False runs them one after the other (the tests' reference run).
OVERLAP = True


def run_batches(job: IngestJob, model: torch.nn.Module, load, records: list[ImageRecord], device: torch.device,
                summary: IngestSummary, stored: dict[str, set[int]] | None = None) -> None:
    """Attribute each of `records` to its class's logit at every layer of the job, in one forward and one
    backward pass per batch, and write each layer's rows as this rank's parts of that layer (an image a layer
    holds already, `stored[layer]`, is not written again there); `load`: how the images become inputs
    (ingest/decode.py: the DataLoader's dataset and collate, then `finish` here). Progress is shown on rank 0
    when the job asks for it."""
    setup, logits, split, rank = job.setup, job.setup.logits, job.split, summary.rank
    batch_size, num_workers = job.batch_size, job.num_workers
    show_progress = job.progress and rank == 0
    writers = {layer.name: PartWriter(job.store.path, split, rank, job.rows_per_part, background=OVERLAP,
                                      layer=layer.name) for layer in setup.layers}
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
        flow = _Lookahead(writers, records, logits, summary, advance, depth=1 if OVERLAP else 0, stored=stored)
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
                for indices, images, labels in groups:
                    batch = [records[i] for i in indices]
                    if labels is not None:  # a Dataset's items bring their labels
                        batch = [replace(record, target=label) for record, label in zip(batch, labels, strict=True)]
                    flow.started(_Attributed(model, setup, batch, images,
                                             None if job.target == "predicted" else logits, device))
            flow.drain()
            with record_function("ingest.write"):
                for writer in writers.values():
                    writer.flush()  # the last part, and every part handed over before it, on disk
        except KeyboardInterrupt:
            flow.drain()  # the batch in flight is complete: keep it too
            for writer in writers.values():
                writer.flush()  # keep the finished rows: the next run resumes after them
            raise KeyboardInterrupt("what was complete is stored; run the same command again to resume") from None
        except BaseException:
            for writer in writers.values():
                writer.settle()  # the part being written is complete: let it land before the store is released
            raise
    summary.parts = sum(writer.parts_written for writer in writers.values())


class _Attributed:
    """One batch whose attribution has been started on `device`, its results on their way to host memory.

    On a GPU the constructor only queues work on the device's stream and returns: the images' copy (the
    DataLoader pinned them) and the targets' (pinned here), forward and backward (`attribute_batch`), and
    non-blocking copies of the small results (argmax and target logit, attributions, input sums) into
    pinned host buffers, after which an event is recorded; `columns()` waits for that event alone, not for
    the batches queued since. On a CPU every step runs when called and the results are the tensors
    themselves, as in the serial loop."""

    def __init__(self, model, setup, batch: list[ImageRecord], images: torch.Tensor, logits: list[int] | None,
                 device: torch.device):
        self.batch = batch
        with record_function("ingest.host_to_device"):
            # `logits` None: each image's predicted logit (`target` predicted), chosen after the forward pass
            targets = None if logits is None else _to_device(torch.tensor([logits[r.target] for r in batch]), device)
            images = images.to(device, non_blocking=True)
        results = attribute_layers(model, [(layer.module, layer.positions) for layer in setup.layers], images,
                                   targets)
        self.layers = [layer.name for layer in setup.layers]
        self.positions = [result.positions for result in results]
        first = results[0]
        with record_function("ingest.device_to_host"):
            outputs = (first.logits.argmax(1), first.logits.gather(1, first.targets.view(-1, 1)).squeeze(1),
                       *(t for result in results for t in (result.attribution, result.input_sum)))
            self.host = [_to_host(t) for t in outputs]
            self.ready = None
            if device.type == "cuda":
                self.ready = torch.cuda.Event()
                self.ready.record()

    def columns(self, class_of_logit: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The batch's rows as each layer's writer's columns; waits for the batch's results on a GPU."""
        with record_function("ingest.device_to_host"):
            if self.ready is not None:
                self.ready.synchronize()
            predicted, target_logit, *per_layer = (t.numpy() for t in self.host)
        known = predicted < len(class_of_logit)
        batch = self.batch
        shared = {
            "image_id": np.array([r.image_id for r in batch], dtype=np.int64),
            "path": np.array([r.path for r in batch], dtype=object),
            "target": np.array([r.target for r in batch], dtype=np.int32),
            "prediction": np.where(known, class_of_logit[np.where(known, predicted, 0)], -1).astype(np.int32),
            "predicted_logit": predicted.astype(np.int32),
            "target_logit": target_logit,
        }
        return {layer: {**shared, "attribution": per_layer[2 * i], "input_sum": per_layer[2 * i + 1],
                        "positions": np.full(len(batch), self.positions[i], dtype=np.int32)}
                for i, layer in enumerate(self.layers)}


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

    def __init__(self, writers: dict[str, PartWriter], records: list[ImageRecord], logits: list[int],
                 summary: IngestSummary, advance, depth: int, stored: dict[str, set[int]] | None = None):
        self.writers, self.records, self.summary, self.advance, self.depth = writers, records, summary, advance, depth
        self.stored = stored or {}
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
            for layer, columns in pending.columns(self.class_of_logit).items():
                already = self.stored.get(layer)
                if already:  # a layer that holds some of these images already: only the others' rows
                    keep = ~np.isin(columns["image_id"], np.fromiter(already, np.int64, len(already)))
                    columns = {name: values[keep] for name, values in columns.items()}
                with record_function("ingest.write"):  # buffered; a full part goes to the writer's thread
                    self.writers[layer].add_samples(**columns)
                zero = int((np.abs(columns["attribution"]).max(axis=1, initial=0) == 0).sum())
                self.summary.n_zero[layer] = self.summary.n_zero.get(layer, 0) + zero
            self.summary.n_written += len(pending.batch)
            self.advance(len(pending.batch))
        failures, self.failures = self.failures, []
        for index, message in failures:
            record = self.records[index]
            # a Dataset's item that failed never told its label (target -1 until loaded): NULL
            next(iter(self.writers.values())).add_error(record.image_id, record.path,
                                                        record.target if record.target >= 0 else None, message)
            self.summary.n_errors += 1
            if len(self.summary.errors) < 5:
                self.summary.errors.append(f"{record.path}: {message}")
        if failures:
            self.advance(len(failures))


WORKER_PRELOAD = ["torch", "torchvision.transforms", "PIL.Image", "polysem.util.images"]


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
