"""Image folders: listing a split, class metadata, stable image ids, robust loading."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from polysem.errors import DataError

WNID = re.compile(r"^n\d{8}$")
CLASS_FILE = "classes.json"  # optional, in DATA_DIR: {"folder": {"name": ..., "wnid": ...}}


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str
    target: int


@dataclass
class SplitListing:
    root: Path
    folders: list[str]
    records: list[ImageRecord]


def image_id(split: str, relative_path: str) -> int:
    """A stable 63-bit id from the split and the path relative to the split folder."""
    digest = hashlib.blake2b(f"{split}/{relative_path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def list_split(data_dir: str | Path, split: str, classes: list[int] | None = None, limit: int | None = None) -> SplitListing:
    """The images of DATA_DIR/SPLIT as an ImageFolder sees them (sorted class folders)."""
    data_dir = Path(data_dir).expanduser().absolute()
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist; pass the folder that holds the split folders")
    root = data_dir / split
    if not root.is_dir():
        present = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        hint = f" (it has: {', '.join(present[:6])})" if present else " (it is empty)"
        raise DataError(f"split folder {root} does not exist{hint}; pass --split with one of them")
    try:
        folder = ImageFolder(str(root), allow_empty=True)
    except FileNotFoundError as error:
        raise DataError(f"{root} has no class folders; lay it out as {root}/<class>/<image>") from error
    folders = list(folder.classes)
    wanted = None
    if classes is not None:
        bad = [c for c in classes if not 0 <= c < len(folders)]
        if bad:
            raise DataError(f"class ids {bad} are out of range; {root} has classes 0..{len(folders) - 1}")
        wanted = set(classes)
    records, per_class = [], {}
    for path, target in folder.samples:
        if wanted is not None and target not in wanted:
            continue
        if limit is not None and per_class.get(target, 0) >= limit:
            continue
        per_class[target] = per_class.get(target, 0) + 1
        relative = Path(path).relative_to(root).as_posix()
        records.append(ImageRecord(image_id(split, relative), path, target))
    if not folder.samples:
        raise DataError(f"split {root} holds no images; put images in its class folders")
    return SplitListing(root, folders, records)


@lru_cache(maxsize=1)
def imagenet_names() -> dict[str, str]:
    """WordNet id -> readable ImageNet class name."""
    text = resources.files("polysem").joinpath("data/imagenet_class_index.json").read_text()
    return {wnid: name for wnid, name in json.loads(text).values()}


def class_rows(data_dir: str | Path, folders: list[str]) -> list[dict]:
    """Rows of the `classes` table: class_id, folder, name, wnid.

    A folder named like a WordNet id is one (ImageNet). DATA_DIR/classes.json may
    give any folder a readable name and a wnid.
    """
    extra_file = Path(data_dir) / CLASS_FILE
    extra = {}
    if extra_file.is_file():
        try:
            extra = json.loads(extra_file.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{extra_file} is not valid JSON ({error}); fix it or remove it") from error
    rows = []
    for class_id, folder in enumerate(folders):
        info = extra.get(folder, {})
        wnid = info.get("wnid") or (folder if WNID.match(folder) else None)
        name = info.get("name") or imagenet_names().get(folder) or folder
        rows.append({"class_id": class_id, "folder": folder, "name": name, "wnid": wnid})
    return rows


class ImageRecords(Dataset):
    """Loads and transforms images; a failure becomes an error message, never an exception."""

    def __init__(self, records: list[ImageRecord], transform: Callable, loader: Callable = default_loader):
        self.records = records
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            image = self.transform(self.loader(self.records[index].path))
            if not isinstance(image, torch.Tensor):
                return index, None, f"transform returned {type(image).__name__}, not a tensor"
            return index, image, None
        except Exception as error:  # corrupt, truncated, unreadable: recorded, not fatal
            return index, None, f"{type(error).__name__}: {error}"


def collate(items):
    """Batch the readable images; keep (index, message) for the others."""
    good = [(i, img) for i, img, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    images = torch.stack([img for _, img in good]) if good else None
    return [i for i, _ in good], images, bad
