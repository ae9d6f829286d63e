"""Stored images as model inputs: records, a Dataset that never raises, and batching by size."""

from __future__ import annotations

import os
import pickle
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from polysem.errors import DataError
from polysem.util.imports import importable_from

__all__ = ["TORCHVISION_FORMATS", "EncodedImages", "ImageRecord", "ImageRecords", "ImageRefused", "collate",
           "collate_encoded", "collate_one_size", "file_kind", "open_image", "opened_image", "pillow_max_pixels",
           "read_for_decoding"]


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: str
    target: int


class ImageRefused(Exception):
    """An image not opened or not decoded on purpose; the message is the reason, stored as it is."""


def pillow_max_pixels() -> int | None:
    """Pillow's pixel limit (Image.MAX_IMAGE_PIXELS, about 89.5 million unless changed; None: no limit)."""
    return Image.MAX_IMAGE_PIXELS


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("FIFO", "socket", ...)."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "special file"


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _pillow_allows(max_pixels: int | None) -> Iterator[None]:
    """Pillow's own check (a warning above MAX_IMAGE_PIXELS, an error above twice that) silenced, and
    lifted while an image under a larger `max_pixels` is opened: the limit that applies is ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pillow = Image.MAX_IMAGE_PIXELS
        if pillow is None or (max_pixels is not None and max_pixels <= 2 * pillow):
            yield
            return
        with _PILLOW_LIMIT:
            Image.MAX_IMAGE_PIXELS = max_pixels  # None (no limit of ours) lifts Pillow's too
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = pillow


@contextmanager
def opened_image(path: str, max_pixels: int | None) -> Iterator[tuple[Image.Image, BinaryIO]]:
    """The image at `path` opened by Pillow, not yet decoded (its header read: size, format, mode), and
    its open file; or ImageRefused: a FIFO, socket or device is never opened for reading (it could block
    forever, or act on a device), and an image above `max_pixels` is never decoded (its size comes from
    the header). max_pixels None: no limit. Pillow's own limit is ours while the block runs."""
    kind = file_kind(os.stat(path).st_mode)  # follows links: the file that would be read
    if kind is not None:
        raise ImageRefused(f"not a regular file ({kind})")
    # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it does not wait for a writer
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as handle:
        kind = file_kind(os.fstat(handle.fileno()).st_mode)
        if kind is not None:
            raise ImageRefused(f"not a regular file ({kind})")
        with _pillow_allows(max_pixels):
            try:
                image = Image.open(handle)
            except Image.DecompressionBombError as error:  # above twice Pillow's limit, hence above ours
                raise ImageRefused(f"above the pixel limit of {max_pixels:,} ({error}); ingest with a larger "
                                   "--max-pixels (max_pixels=) to read it") from None
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageRefused(f"{width} x {height} = {width * height:,} pixels, above the pixel limit of "
                                   f"{max_pixels:,}; ingest with a larger --max-pixels (max_pixels=) to read it")
            yield image, handle


def open_image(path: str, max_pixels: int | None) -> Image.Image:
    """The RGB image at `path`, decoded by Pillow, or ImageRefused (`opened_image`)."""
    with opened_image(path, max_pixels) as (image, _):
        return image.convert("RGB")


# What torchvision.io.decode_image reads of the formats Pillow names; Pillow decodes the others (BMP, PPM,
# TIFF, GIF's first frame) for the tensor decoder, as the default decoder would.
TORCHVISION_FORMATS = ("JPEG", "PNG", "WEBP")


def read_for_decoding(path: str, max_pixels: int | None) -> torch.Tensor:
    """The image at `path` for the batched tensor decoder (`--decode tensor`): the file's bytes (a 1-D uint8
    tensor) when it is a three-component JPEG, which decode_jpeg takes in a batch on any device; any other
    image (PNG, a grayscale or CMYK JPEG, ...) decoded here on the CPU, a 3 x H x W uint8 tensor, by
    torchvision.io.decode_image (Pillow for the formats torchvision does not read). The same refusals as
    `open_image`: special files, and images above `max_pixels` (from the header, before any decoding)."""
    from torchvision.io import ImageReadMode, decode_image

    with opened_image(path, max_pixels) as (image, handle):
        handle.seek(0)
        data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        if image.format == "JPEG" and image.mode == "RGB":
            return data
        if image.format in TORCHVISION_FORMATS:
            decoded = decode_image(data, mode=ImageReadMode.RGB)
            if decoded.dtype != torch.uint8:  # a 16-bit PNG: its top 8 bits
                from torchvision.transforms.v2.functional import to_dtype

                decoded = to_dtype(decoded, torch.uint8, scale=True)
            return decoded
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


class ImageRecords(Dataset):
    """Loads and transforms images; a failure becomes an error message, never an exception.

    max_pixels: images with more pixels are not decoded but reported (default: Pillow's limit at
    construction). It travels with the dataset into DataLoader worker processes.
    """

    def __init__(self, records: list[ImageRecord], transform: Callable, loader: Callable | None = None,
                 import_root: str | None = None, max_pixels: int | None = None):
        self.records = records
        self.transform = transform
        self.loader = loader  # path -> PIL image; None: open_image with max_pixels
        self.import_root = import_root  # where a module:callable transform is imported from
        self.max_pixels = pillow_max_pixels() if max_pixels is None else max_pixels

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
        path = self.records[index].path
        try:
            image = self.transform(open_image(path, self.max_pixels) if self.loader is None else self.loader(path))
            if not isinstance(image, torch.Tensor):
                return index, None, f"transform returned {type(image).__name__}, not a tensor"
            return index, image, None
        except ImageRefused as refused:
            return index, None, str(refused)
        except Exception as error:  # noqa: BLE001 -- corrupt, truncated, unreadable: recorded, not fatal
            return index, None, f"{type(error).__name__}: {error}"


class EncodedImages(Dataset):
    """The tensor decoder's dataset: each image as `read_for_decoding` gives it (file bytes of a JPEG, or an
    image decoded on the CPU); a failure becomes an error message, never an exception, as in ImageRecords.
    The JPEGs are decoded in the ingest process, in batches, on the ingest's device (ingest/decode.py)."""

    def __init__(self, records: list[ImageRecord], max_pixels: int | None = None):
        self.records = records
        self.max_pixels = pillow_max_pixels() if max_pixels is None else max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            return index, read_for_decoding(self.records[index].path, self.max_pixels), None
        except ImageRefused as refused:
            return index, None, str(refused)
        except Exception as error:  # noqa: BLE001 -- corrupt, truncated, unreadable: recorded, not fatal
            return index, None, f"{type(error).__name__}: {error}"


def collate_encoded(items):
    """(groups, failures) as `collate` gives them, with one group whose images are a list: JPEG bytes and
    decoded images of any size, in the order of their indices (the tensor decoder batches them)."""
    read = [(i, data) for i, data, err in items if err is None]
    groups = [([i for i, _ in read], [data for _, data in read])] if read else []
    return groups, [(i, err) for i, _, err in items if err is not None]


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
