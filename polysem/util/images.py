"""Stored images as model inputs: records, a Dataset that never raises, and batching by size."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from polysem.errors import DataError
from polysem.util.imports import importable_from

__all__ = ["ImageRecord", "ImageRecords", "collate", "collate_one_size"]


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str
    target: int


class ImageRecords(Dataset):
    """Loads and transforms images; a failure becomes an error message, never an exception."""

    def __init__(self, records: list[ImageRecord], transform: Callable, loader: Callable = default_loader,
                 import_root: str | None = None):
        self.records = records
        self.transform = transform
        self.loader = loader
        self.import_root = import_root  # where a module:callable transform is imported from

    def __getstate__(self) -> dict:
        # the transform travels pickled on its own, so that a worker process unpickles it with
        # its folder importable (a user's module is found there, not on the worker's sys.path)
        return {**self.__dict__, "transform": pickle.dumps(self.transform)}

    def __setstate__(self, state: dict) -> None:
        with importable_from(state["import_root"]):
            state["transform"] = pickle.loads(state["transform"])
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            image = self.transform(self.loader(self.records[index].path))
            if not isinstance(image, torch.Tensor):
                return index, None, f"transform returned {type(image).__name__}, not a tensor"
            return index, image, None
        except Exception as error:  # noqa: BLE001 -- corrupt, truncated, unreadable: recorded, not fatal
            return index, None, f"{type(error).__name__}: {error}"


def collate(items):
    """Batch the readable images, one group per image size; keep (index, message) for the others.

    Returns (groups, failures): groups is a list of (indices, N x C x H x W tensor), so a
    transform that does not resize still works on images of mixed sizes.
    """
    groups: dict[tuple, list] = {}
    for i, img, err in items:
        if err is None:
            groups.setdefault(tuple(img.shape), []).append((i, img))
    batches = [([i for i, _ in members], torch.stack([img for _, img in members])) for members in groups.values()]
    return batches, [(i, err) for i, _, err in items if err is not None]


def collate_one_size(items, what: str = "the images"):
    """(indices, N x C x H x W tensor or None, failures) for code that needs one batch of one size."""
    groups, failures = collate(items)
    if len(groups) > 1:
        sizes = ", ".join("x".join(map(str, images.shape[1:])) for _, images in groups)
        raise DataError(f"{what} have different sizes after the transform ({sizes}); use a `transform` that resizes")
    indices, images = groups[0] if groups else ([], None)
    return indices, images, failures
