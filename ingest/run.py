"""The ingest job: run a CNN over an image folder (or a map-style torch Dataset, `objects`) and store per-image
attributions.

Runs as one process or under `torchrun` (each rank takes every world_size-th remaining image and writes its
own parts). Resumable: images already stored (or already recorded as unreadable) are skipped. The jobs live
apart: `options` (checks, and the options reconciled with the store), `probe` (model, layer and transform
resolved and tried on one image), `store_setup` (the store created under its lock), `ranks` (torchrun),
`pipeline` (the DataLoader, the device and the writer), `resume` (what is stored already), `objects` (a Dataset
and a model object in place of a folder and a name).
"""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn
from torch.profiler import record_function
from torch.utils.data import Dataset

from polysem.errors import DataError
from polysem.ingest import pipeline
from polysem.ingest.dataset import SplitListing, check_split_name, list_split
from polysem.ingest.decode import check_decode, check_device_decoder, loading
from polysem.ingest.job import IngestJob, IngestSummary
from polysem.ingest.models import resolve_device
from polysem.ingest.objects import (
    DATASET_TRANSFORM,
    check_data_kind,
    check_object_options,
    check_transform_option,
    data_object,
    dataset_listing_parts,
    model_option,
    remember,
)
from polysem.ingest.options import (
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    check_counts,
    check_listing,
    check_max_pixels,
    existing_meta,
    layer_list,
    reconcile_settings,
)
from polysem.ingest.probe import load_setup
from polysem.ingest.ranks import DEFAULT_RANK_TIMEOUT, RANK_TIMEOUT_MAX, start_ranks
from polysem.ingest.resume import remaining, stored_ids
from polysem.ingest.store_setup import prepare_on_rank0
from polysem.ingest.threads import default_threads, torch_threads
from polysem.query import Store
from polysem.query.compact import compact_split
from polysem.query.integrity import incomplete_layers
from polysem.query.screening import ZERO_ATTRIBUTION_CAUSE
from polysem.query.store import as_store
from polysem.util.checks import check_bool, check_class_list, check_path, check_real, check_text

__all__ = ["DEFAULT_LAYER", "DEFAULT_MODEL", "IngestSummary", "ingest"]


def ingest(
    store: Store | str | os.PathLike | None,
    data: str | os.PathLike | Dataset,
    split: str = "train",
    *,
    model: str | nn.Module | None = None,
    weights: str | None = None,
    layer: str | list[str] | None = None,
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
    target: str | None = None,
    positions: str | None = None,
) -> IngestSummary:
    """Ingest `data` into the store as split SPLIT: the folder DATA_DIR/SPLIT, or a map-style torch Dataset of
    (tensor C x H x W, int label) items. Returns what this process wrote.

    model/weights/layer/transform default to what the store recorded, or, for a
    new store, to resnet50 / imagenet / layer4.2.conv3 / imagenet preprocessing.
    `model` is a name or an `nn.Module` object; a Dataset's rows are its indices, its labels class ids (names from
    its `classes`, else numbers), one logit per class id. polysem works on a copy of a model object, and keeps
    the objects for later calls of this process (`polysem.use` gives them to another; ingest/objects.py).
    A Dataset loads in this process unless `num_workers` is given.
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
    gives no sign of life, before they stop naming it (ingest/ranks.py). `target`: the logit each image is
    attributed to: label (its own class's, the paper's) or predicted (the model's argmax, as captum users often
    choose); default the store's, else label. A store holds one target's rows only. `layer`: a Conv2d, or a
    Linear the forward pass applies per token or position (input batch x ... x features); `positions`: which
    positions of a Linear count: all (default), cls (the class token, the first of dim 1) or patch (the
    others), recorded in the store.
    """
    store = as_store(store)
    dataset = data_object(data)
    if dataset is None:
        check_path("data", data)
    check_text("split", split)
    layers = layer_list(layer)
    model, model_object = model_option(model)
    check_transform_option(transform)
    for name, value in (("model", model), ("weights", weights), ("transform", transform)):
        check_text(name, value, none=True)
    check_text("device", device)
    classes = check_class_list("classes", classes, none=True)
    check_bool("progress", progress)
    check_bool("compact", compact)
    if dataset is not None and num_workers is None:
        num_workers = 0  # the caller's object, which workers may not be able to import (ingest/objects.py)
    batch_size, num_workers, limit, rows_per_part, threads = check_counts(batch_size, num_workers, limit,
                                                                          rows_per_part, threads)
    max_pixels = check_max_pixels(max_pixels)
    rank_timeout = check_real("rank_timeout", rank_timeout, 0, RANK_TIMEOUT_MAX, low_open=True, hint=" seconds")
    check_decode(decode, transform)
    check_object_options(dataset, model_object, weights=weights, transform=transform, decode=decode, classes=classes,
                         limit=limit, num_workers=num_workers)
    store.check_writable()
    existing = existing_meta(store)
    check_data_kind(existing, dataset)
    if dataset is not None:
        transform = DATASET_TRANSFORM  # what the store records: the Dataset's items are the inputs
    check_decode(decode, transform or (existing or {}).get("transform"),  # the store's transform, if it has one
                 stores_transform=transform is None and existing is not None)
    settings = reconcile_settings(existing, model, weights, layers, transform, decode, target, positions)
    check_decode(settings.decode, settings.transform, stored=existing is not None)  # a received store's pair, too
    if dataset is None:
        listing = list_split(cast("str | os.PathLike", data), split, classes=classes, limit=limit)
        check_listing(store, existing, listing, split)
    else:
        check_split_name(split)
        listing = SplitListing(*dataset_listing_parts(dataset, split), dataset=dataset)
    setup = load_setup(store, existing, settings, listing, None if dataset is not None else cast("str", data),
                       max_pixels, model_object)
    if dataset is not None:  # its class names may come from the model's outputs, known after the probe
        check_listing(store, existing, listing, split)
    job = IngestJob(store, split, listing, setup, batch_size, num_workers, threads, rows_per_part, progress,
                    compact, max_pixels, settings.decode, rank_timeout, settings.target,
                    first_layer=(existing or {}).get("layer") or setup.layers[0].name,
                    store_layers=tuple(dict.fromkeys([*((existing or {}).get("layers") or {}),
                                                      *(layer.name for layer in setup.layers)])))
    run_device = resolve_device(device)
    if settings.decode == "tensor":
        check_device_decoder(run_device)
    summary = _run_job(job, run_device)
    if summary.rank == 0 and existing is None and dataset is None and settings.transform is None and (
            model_object is not None or ":" in settings.model):  # a model of the user's own, without its transform
        summary.warnings.insert(0, DEFAULT_TRANSFORM_NOTE)
    if model_object is not None or dataset is not None:  # for the later calls of this process
        remember(store, model_object, {split: dataset} if dataset is not None else None)
    return summary


DEFAULT_TRANSFORM_NOTE = (
    "no transform was given, so each image was resized to 256 pixels, center-cropped to 224 and normalised with "
    "ImageNet's mean and std (the preprocessing of torchvision's ImageNet models); if your model takes other "
    "inputs, ingest into a new store with --transform MODULE:NAME (`transform` in Python)")

ZERO_SHARE = 0.9  # when this share (or more) of the written images has all-zero attributions, say so


def zero_attribution_warning(summary: IngestSummary, layer: str) -> list[str]:
    """One line when (nearly) every image this process wrote has all-zero attributions at `layer`: the target
    logit then does not depend on the layer, and every later step (relevance, ARVs, screening) has nothing to
    work on."""
    n_zero = summary.n_zero.get(layer, 0)
    if summary.n_written == 0 or n_zero < ZERO_SHARE * summary.n_written:
        return []
    share = "all" if n_zero == summary.n_written else f"{n_zero} of {summary.n_written}"
    return [(f"{share} of the {summary.split} images written have all-zero attributions at layer {layer}: "
             f"{ZERO_ATTRIBUTION_CAUSE}")]


def _stored(job: IngestJob) -> dict[str, set[int]]:
    """The images each layer of the job holds already in the split (resume, or a layer added to a store)."""
    first = job.first_layer
    return {layer.name: stored_ids(job.store.path, job.split, layer.name, first) for layer in job.setup.layers}


def _run_job(job: IngestJob, run_device: torch.device) -> IngestSummary:
    """Every rank attributes its share of the images some layer does not hold yet; rank 0 creates or extends
    the store first, holds the split's lock throughout, and compacts the split at the end."""
    store, split = job.store, job.split
    ranks = start_ranks(run_device, job.rank_timeout)  # all ranks join in time, or one line names who did not
    rank, world_size = ranks.rank, ranks.world_size
    lock = None
    try:
        lock = prepare_on_rank0(job, ranks)
        stored = _stored(job)
        ranks.barrier("reading what is stored")  # every rank read the same `stored` before any rank writes
        records = job.listing.records
        everywhere = set.intersection(*stored.values())
        todo = remaining(records, everywhere)
        mine = todo[rank::world_size]
        summary = IngestSummary(store.path, split, len(records) - len(todo),
                                rank=rank, world_size=world_size, device=str(run_device))
        setup = job.setup
        with torch_threads(job.threads if job.threads is not None else default_threads(run_device, job.num_workers)):
            pipeline.run_batches(job, setup.resolved.model.to(run_device),
                                 loading(job.decode, mine, setup.transform.fn, setup.transform.import_root,
                                         job.max_pixels), mine, run_device, summary, stored)
        ranks.barrier("writing their shares")  # a rank still working is waited for; a silent one is named
        if world_size > 1 and rank == 0:  # report what all ranks wrote, not just this one
            after = _stored(job)
            summary.n_written = len(set.union(*after.values())) - len(set.union(*stored.values()))
        if mine and not everywhere and summary.n_written == 0 and summary.n_errors == len(mine):
            raise DataError(f"none of the {len(mine)} images to ingest could be read (first: {summary.errors[0]}); "
                            "they are listed in ingest_errors; fix them and run this again")
        for layer in setup.layers:
            summary.warnings += zero_attribution_warning(summary, layer.name)
        if job.compact and rank == 0:  # every rank has written its parts (barrier above); rank 0 holds the lock
            with record_function("ingest.compact"):
                compact_split(store.path, split, job.first_layer)
        if rank == 0 and len(job.store_layers) > 1:  # a layer of the store this ingest did not complete (another
            # ingest was stopped; one layer cannot fall behind itself); read after compacting, so the next read of
            # the store finds this state's copy prepared (Store._open_snapshot)
            summary.warnings += incomplete_layers(store, split)
        return summary
    except BaseException as error:
        ranks.failed(error)  # the other ranks stop at their next meeting, naming this rank and why
        raise
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock
        ranks.close()
