"""The model, layer and transform resolved, and one image run through them, before anything is written."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import cast

import pyarrow as pa
import torch
from torch.profiler import record_function

from polysem.errors import ArgumentRange, DataError, ModelError, StoreMismatch
from polysem.ingest.dataset import SplitListing, class_rows
from polysem.ingest.models import (
    DEFAULT_TRANSFORM,
    ResolvedModel,
    ResolvedTransform,
    linear_position_problem,
    resolve_layer,
    resolve_model,
    resolve_transform,
)
from polysem.ingest.objects import (
    DATASET_TRANSFORM,
    DatasetSource,
    dataset_class_rows,
    ingest_model,
    is_object_spec,
    probe_dataset,
)
from polysem.ingest.options import Settings
from polysem.ingest.units import DEFAULT_POSITIONS, is_linear
from polysem.query import Store, layout
from polysem.query.meta import check_layer_name, layer_positions
from polysem.util.images import ImageRecords
from polysem.util.imports import code_folder

__all__ = ["PROBE_TRIES", "LayerSetup", "Setup", "check_positions", "load_setup", "probe_model"]


@dataclass(frozen=True)
class LayerSetup:
    """One layer an ingest stores: its dotted name, its module and the positions that count (`ingest.units`)."""

    name: str
    module: torch.nn.Conv2d | torch.nn.Linear
    positions: str = DEFAULT_POSITIONS


@dataclass
class Setup:
    """The model, its layers and the transform resolved and probed, and the store's class table."""

    resolved: ResolvedModel
    layers: list[LayerSetup]
    transform: ResolvedTransform
    class_table: pa.Table

    @property
    def logits(self) -> list[int]:
        """class id -> model output index"""
        return self.class_table.column("logit").to_pylist()


def load_setup(store: Store, existing: dict | None, settings: Settings, listing: SplitListing,
               data_dir: str | os.PathLike | None, max_pixels: int | None = None,
               model_object: torch.nn.Module | None = None) -> Setup:
    """The store's code (its folders cleared first) or the user's, or the model object (a copy) and the
    Dataset of the listing, resolved and probed on one image."""
    transform = settings.transform
    # the store's own code: both folders are cleared before anything is imported; a Dataset's items are the
    # inputs (`probe_model` reads them): it has no transform
    transform_root = None if existing is None or listing.dataset is not None else code_folder(
        transform or DEFAULT_TRANSFORM, "transform", existing.get("transform_import_root"), store.path,
        store.trust_code)
    resolved = _resolved_model(store, existing, settings, model_object)
    stored = (existing or {}).get("layers") or {}
    layers = []
    for name in settings.layers:
        check_layer_name(name)
        module = resolve_layer(resolved.model, name)
        positions = (layer_positions(stored[name]) if name in stored
                     else check_positions(settings.positions, module, name))
        layers.append(LayerSetup(name, module, positions))
    image_transform = None if listing.dataset is not None else resolve_transform(
        transform, import_root=transform_root, store_dir=store.path)
    if existing is not None and existing["weights_sha256"] != resolved.weights_sha256:
        given = resolved.weights_sha256[:12]
        if model_object is None and (settings.weights is None or os.path.abspath(
                os.path.expanduser(settings.weights)) == existing["weights"]):  # the recorded file, changed since
            raise StoreMismatch(
                f"the weights {existing['weights']} have changed since store {store.path} was ingested with them "
                f"(sha256 {existing['weights_sha256'][:12]} then, {given} now): restore that file, or ingest into "
                "another `store`")
        raise StoreMismatch(
            f"store {store.path} holds attributions of other weights ({existing['weights']}, sha256 "
            f"{existing['weights_sha256'][:12]}; these are sha256 {given}); use the same weights or another `store`"
        )
    with record_function("ingest.probe"):
        n_outputs = probe_model(resolved.model, layers, image_transform and image_transform.fn, listing, max_pixels)
    class_table = _class_table(store, existing, n_outputs, data_dir, listing, resolved)
    if image_transform is None:
        _check_dataset_labels(listing, class_table)
        source = DatasetSource(lambda _split: listing.dataset, n_classes=class_table.num_rows)
        image_transform = ResolvedTransform(source, DATASET_TRANSFORM)
    return Setup(resolved, layers, image_transform, class_table)


def _resolved_model(store: Store, existing: dict | None, settings: Settings,
                    model_object: torch.nn.Module | None) -> ResolvedModel:
    """The model object's copy, or the store's code (its folder cleared before it is imported) or the user's
    (from the current folder or PYTHONPATH, never from inside the store)."""
    if is_object_spec(settings.model):
        return ingest_model(store, existing, settings.model, model_object)
    model_root = None if existing is None else code_folder(
        settings.model, "model", existing.get("model_import_root"), store.path, store.trust_code)
    return resolve_model(settings.model, settings.weights, import_root=model_root, store_dir=store.path)


def _check_dataset_labels(listing: SplitListing, class_table: pa.Table) -> None:
    """The first items' labels are class ids of the store (a later one that is not is an ingest error)."""
    _, labels = probe_dataset(listing.dataset, PROBE_TRIES)
    n = class_table.num_rows
    bad = next((i for i, label in enumerate(labels) if not 0 <= label < n), None)
    if bad is not None:
        raise DataError(f"item {bad} of `data` has label {labels[bad]}, but the classes are 0 to {n - 1} "
                        f"({', '.join(class_table.column('name').to_pylist()[:4])}{', ...' if n > 4 else ''}); "
                        "a label is a class id")


def check_positions(positions: str | None, module: torch.nn.Module, layer: str) -> str:
    """The positions that count: all (the default), or cls / patch, which only a Linear over tokens has."""
    if positions is None:
        return DEFAULT_POSITIONS
    if positions != DEFAULT_POSITIONS and not is_linear(module):
        raise ArgumentRange(f"`positions` {positions} chooses tokens of a Linear layer; layer '{layer}' is a "
                            f"{type(module).__name__}: omit `positions`")
    return positions


def _class_table(store: Store, existing: dict | None, n_outputs: int, data_dir: str | os.PathLike | None,
                 listing: SplitListing, resolved: ResolvedModel) -> pa.Table:
    """The store's classes, or, for a new store, the classes of the listing with their logits. A Dataset
    without class names has one class per output of the model (the listing learns their names here)."""
    if listing.dataset is not None and not listing.folders:
        listing.folders = [str(i) for i in range(n_outputs)]
    if existing is None:
        rows = dataset_class_rows(listing.folders, n_outputs, resolved.model_spec) if listing.dataset is not None \
            else class_rows(cast("str | os.PathLike", data_dir), listing.folders, n_outputs, resolved.model_spec)
        return pa.Table.from_pylist(rows, schema=layout.CLASSES)
    class_table = store.reads.class_list()
    bad = [v for v in class_table.column("logit").to_pylist() if not 0 <= v < n_outputs]
    if bad:
        raise ModelError(f"the model now has {n_outputs} outputs but the store maps a class to logit {bad[0]}; "
                         "use the model the store was made with")
    return class_table


PROBE_TRIES = 8  # images tried before concluding that the split is unreadable


def probe_model(model: torch.nn.Module, layers: list[LayerSetup], transform, listing,
                max_pixels: int | None = None) -> int:
    """Run one image of the split through transform and model; return the number of outputs.

    Catches, before anything is written: a transform that gives no C x H x W tensor, a model
    that fails on it, a layer the forward pass never uses or uses twice, a Linear not applied per
    token or position (or with no token axis for `positions` cls / patch), an output that is not N x K logits.
    """
    if listing.dataset is not None:
        image, _ = probe_dataset(listing.dataset, PROBE_TRIES)
        return _probe_forward(model, layers, image, f"item 0 of `data` (input {tuple(image.shape)})")
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
        return _probe_forward(model, layers, image, f"{record.path} (input {tuple(image.shape)} from the transform)")
    raise DataError(f"the first {len(errors)} images of {listing.root} cannot be read ({errors[0]}); "
                    "fix or remove them")


def _probe_forward(model: torch.nn.Module, layers: list[LayerSetup], image: torch.Tensor, source: str) -> int:
    """One image (C x H x W) through the model, checked as `probe_model` says; the number of outputs."""
    from polysem.ingest.attribution import layer_probe

    try:
        with torch.no_grad(), ExitStack() as probes:
            seen = [probes.enter_context(layer_probe(layer.module)) for layer in layers]
            output = model(image.unsqueeze(0))
    except (Exception, SystemExit) as failure:
        raise ModelError(f"the model fails on {source}: {type(failure).__name__}: {_first_line(failure)}; "
                         "check `model`, `weights` and `transform`") from failure
    for layer, layer_seen in zip(layers, seen, strict=True):
        _check_layer_run(layer, layer_seen)
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"the model returns {shape} for one image, not 1 x K logits; make it return a "
                         "batch x classes tensor")
    return int(output.shape[1])


def _check_layer_run(layer: LayerSetup, seen: dict) -> None:
    """The layer ran once in the probe's forward pass, and a Linear's input has the batch on dim 0 and positions."""
    if "output" not in seen:
        raise ModelError(f"layer '{layer.name}' never runs in the model's forward pass; choose a layer that "
                         "the forward pass uses (`polysem layers` lists them)")
    if seen["calls"] > 1:
        raise ModelError(f"layer '{layer.name}' runs {seen['calls']} times in one forward pass (a module used "
                         "twice); its attributions would mix the uses: choose a layer that runs once")
    if is_linear(layer.module):
        problem = linear_position_problem(layer.name, tuple(seen["input"].shape))
        if problem is None and layer.positions != DEFAULT_POSITIONS and seen["input"].dim() != 3:
            problem = (f"`positions` {layer.positions} needs one token axis (input 1 x T x D); layer '{layer.name}' "
                       f"gets {' x '.join(map(str, seen['input'].shape))}: omit `positions`")
        if problem is not None:
            raise ModelError(problem)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"
