"""The l-1 feature maps (the input of the layer of interest) of stored images, cached in the store.

The rho search (docs/method.md section 6) is non-linear per position, so it needs the
maps themselves, not only their sums. They are computed once per class and layer and kept
in STORE/cache/features/<layer>/<split>/class-<id>.npz; a later run on the same class
and layer loads them instead of running the model again.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from polysem.errors import RunError
from polysem.ingest.attribution import exact_math
from polysem.ingest.objects import record_images, recorded_length
from polysem.query import layout
from polysem.query.meta import DATASET_TRANSFORM
from polysem.query.store import Store
from polysem.util import atomic
from polysem.util.hooks import input_of
from polysem.util.images import ImageRecord, collate
from polysem.util.progress import progress_bar

__all__ = ["ModelPass", "cached_array", "cached_class_maps", "check_data_dir", "class_records", "compute_feature_maps", "feature_maps",
           "per_image_attributions", "remap_paths"]


@dataclass(frozen=True)
class ModelPass:
    """How a model runs over a list of images: on `device`, `batch_size` images at a time, with a progress bar
    named `label` when `progress`."""

    device: torch.device
    batch_size: int = 64
    progress: bool = True
    label: str = ""

    def named(self, label: str) -> ModelPass:
        """The same pass with its progress bar named `label`."""
        return replace(self, label=label)


def _class_rows(store: Store, class_id: int, split: str) -> list[dict]:
    return store.reads.class_images(split=split, class_id=class_id, limit=2**62).to_pylist()


def class_records(store: Store, class_id: int, split: str, data_dir: str | os.PathLike | None = None,
                  rows: list[dict] | None = None) -> list[ImageRecord]:
    """The stored images of one class, in image_id order, with paths checked (and remapped to data_dir)."""
    rows = rows if rows is not None else _class_rows(store, class_id, split)
    return [ImageRecord(r["image_id"], r["path"], r["target"]) for r in remap_paths(store, rows, split, data_dir)]


def check_data_dir(data_dir: str | os.PathLike, holds: str = "the store's splits") -> Path:
    """DATA_DIR as an absolute path, or a RunError naming it as missing."""
    given = Path(data_dir).expanduser().absolute()
    if not given.is_dir():
        what = "is not a folder" if given.exists() else "does not exist"
        raise RunError(f"data folder {given} {what}; pass `data_dir` with the folder that holds {holds}")
    return given


def remap_paths(store: Store, rows: list[dict], split: str, data_dir: str | os.PathLike | None) -> list[dict]:
    """Point stored paths at DATA_DIR/SPLIT when given; fail on the first missing image. The rows of a split
    made from a Dataset name its items, not files (`record_images` reads them): they stay as they are."""
    meta = store.meta()
    root = meta["dataset_roots"].get(split)
    if recorded_length(root) is not None and meta["transform"] == DATASET_TRANSFORM:  # rows name items, not files
        if data_dir is not None:
            raise RunError(f"`data_dir` names image folders, but split '{split}' of this store comes from a Dataset "
                           f"({root}); omit `data_dir` (polysem.use gives the Dataset)")
        return rows
    problem = layout.image_root_problem(root)
    if problem is not None:
        raise RunError(f"split '{split}' of the store: {problem}; polysem reads a store's images from the folder its "
                       "ingest recorded only: the store was edited; ingest the images into a new store")
    outside = next((r for r in rows if not layout.image_path_in_root(r["path"], root)), None)
    if outside is not None:  # a store edited, or sent by someone: it names files of its split's folder only
        raise RunError(f"image {outside['path']!r} of split '{split}' lies outside the split's folder {root}, which the "
                       "store records; polysem reads a store's images from that folder (or `data_dir`) only, and "
                       "ingest never writes such a path: the store was edited; ingest the images into a new store")
    if data_dir is not None:
        old_root = Path(root)
        given = check_data_dir(data_dir, f"the {split} split (the store's images were read from {old_root})")
        new_root = given / split
        if not new_root.is_dir():
            raise RunError(f"data folder {given} has no {split} folder ({new_root} does not exist); pass `data_dir` "
                           f"with the folder that holds the {split} split (the store's images were read from {old_root})")
        rows = [{**r, "path": str(new_root / r["path"][len(root) + 1:])} for r in rows]  # below root (checked)
    for row in rows:
        if not Path(row["path"]).is_file():
            raise RunError(
                f"image {row['path']} is missing (moved since ingest?); pass `data_dir` with the folder that now holds "
                f"the {split} split"
            )
    return rows


def feature_maps(model: nn.Module, layer: nn.Module, records: list[ImageRecord], transform,
                 run: ModelPass) -> np.ndarray:
    """The layer's input for each record, in order, float32: N x C_{l-1} x H x W for a conv, N x ... x C_{l-1}
    for a Linear applied per token or position (every position, whichever the store counts)."""
    label = run.label
    loader = DataLoader(record_images(records, transform), batch_size=run.batch_size, collate_fn=collate)
    maps = []
    with progress_bar(f"feature maps {label}", len(records), run.progress) as advance, torch.no_grad():
        for groups, failures in loader:
            if failures:
                index, message = failures[0]
                raise RunError(f"cannot read {records[index].path}: {message}")
            if len(groups) != 1:
                raise RunError(f"the images of {label} have different sizes after the transform; the rho search "
                               "needs one size: use a `transform` that resizes")
            indices, images = groups[0]
            with exact_math():
                layer_input = input_of(model, layer, images.to(run.device))
            maps.append(layer_input.float().cpu().numpy())
            advance(len(indices))
    return np.concatenate(maps) if maps else np.zeros((0,), np.float32)


LAYER_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a layer name that is one plain folder name


def cached_class_maps(store: Store, model: nn.Module, layer_name: str, *, layer: nn.Module, transform, class_id: int,
                      split: str, run: ModelPass, data_dir=None) -> np.ndarray:
    """The feature maps of all N stored images of a class at the layer named `layer_name` (`feature_maps`), in
    image id order; computed once, then read from the store's cache, a folder per layer so that another
    layer's maps of the same images are never taken for these."""
    if not LAYER_FOLDER.fullmatch(layer_name):
        raise RunError(f"layer name {layer_name!r} cannot name a cache folder; polysem caches feature maps only "
                       "for layers named by letters, digits, '_', '.' and '-'")
    rows = _class_rows(store, class_id, split)
    ids = np.array([r["image_id"] for r in rows], dtype=np.int64)
    path = store.path / "cache" / "features" / layer_name / split / f"class-{class_id}.npz"
    return cached_array(path, ids, "maps", lambda: compute_feature_maps(
        model, layer, class_records(store, class_id, split, data_dir, rows), transform, run.named(f"class {class_id}")))


def cached_array(path: Path, ids: np.ndarray, name: str, compute) -> np.ndarray:
    """The array `compute()` gives for the images `ids` (one row each), kept in the .npz at `path`.

    The cache is used only while it holds the same image ids (an ingest since may have added
    images); it is written under a temporary name and renamed, so a crash leaves no half file.
    """
    if path.is_file():
        try:
            with np.load(path) as cached:  # no pickled objects (allow_pickle is off): a cache holds arrays only
                if name in cached.files and np.array_equal(cached["image_id"], ids):
                    return cached[name]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # damaged, or not what polysem writes: computed again and replaced
    values = compute()
    with atomic.atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez would add .npz to any other name
        np.savez(tmp, image_id=ids, **{name: values})
    return values


def compute_feature_maps(*args, **kwargs) -> np.ndarray:
    """Indirection so tests can check that a cached class never reaches the model."""
    return feature_maps(*args, **kwargs)


def attributed_logit(meta: dict, class_logit: int) -> int | None:
    """The logit an image of a class is attributed to in this store: the class's own (`target` label, the
    paper's), or None for each image's predicted one (`target` predicted), as its ingest did."""
    from polysem.query.meta import recorded_target

    return None if recorded_target(meta) == "predicted" else class_logit


def per_image_attributions(records: list[ImageRecord], transform, logit: int | None,
                           attribute: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], *,
                           out_channels: int, run: ModelPass) -> np.ndarray:
    """N x out_channels float32: `attribute(images, targets)` (one row per image) of logit `logit` for each
    record, in order (None: each image's predicted logit, for a store made with `target` predicted); the
    images of a batch are grouped by size. An unreadable image is refused."""
    device = run.device
    loader = DataLoader(record_images(records, transform), batch_size=run.batch_size, collate_fn=collate)
    result = np.zeros((len(records), out_channels), np.float32)
    with progress_bar(run.label, len(records), run.progress) as advance:
        for groups, failures in loader:
            if failures:
                index, message = failures[0]
                raise RunError(f"cannot read {records[index].path}: {message}")
            for indices, images in groups:  # one group per image size
                targets = None if logit is None else torch.full((len(indices),), logit, dtype=torch.long,
                                                                device=device)
                result[list(indices)] = attribute(images.to(device), targets).cpu().numpy()
                advance(len(indices))
    return result
