"""Stored images as model inputs: records, a Dataset that never raises, and batching by size."""

from __future__ import annotations

import io
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

__all__ = ["TORCHVISION_FORMATS", "EncodedImages", "ImageRecord", "ImageRecords", "ImageRefused", "JpegFrame",
           "collate", "collate_encoded", "collate_one_size", "declared_jpeg_frame", "file_kind", "jpeg_frame",
           "open_image", "opened_image", "pillow_max_pixels", "read_for_decoding"]


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


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG's frame header (its SOFn segment) declares: the SOF marker's second byte (0xC0 to 0xCF),
    the size in pixels, and each component's (horizontal, vertical) sampling factors."""

    marker: int
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]

    @property
    def arithmetic(self) -> bool:
        """Arithmetic-coded (SOF9 to SOF11, SOF13 to SOF15): its scans may hold less than a bit per block."""
        return self.marker >= 0xC9


# SOF0 to SOF15 but DHT (0xC4), JPG (0xC8) and DAC (0xCC), which share the range
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows


def jpeg_frame(stream: BinaryIO) -> JpegFrame | None:
    """The frame header of the JPEG that starts at `stream`'s position, found by stepping over the segments
    before it (their lengths, never their contents, and never the scan); None when the stream is no JPEG or
    holds no frame header before its first scan. Bytes between segments are skipped, as Pillow and libjpeg
    skip them; the first frame header counts, as in libjpeg, which refuses a second one."""
    if stream.read(2) != b"\xff\xd8":
        return None
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        if byte != b"\xff":  # junk between segments
            continue
        while byte == b"\xff":  # fill bytes may precede a marker
            byte = stream.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x00 or marker in _STANDALONE_MARKERS:  # 0x00: an escaped 0xFF in the junk
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        length = int.from_bytes(stream.read(2), "big")
        if length < 2:
            return None
        if marker not in _SOF_MARKERS:
            stream.seek(length - 2, io.SEEK_CUR)
            continue
        body = stream.read(length - 2)  # precision, height, width, components, then 3 bytes a component
        if len(body) < 6 or len(body) < 6 + 3 * body[5]:
            return None
        sampling = tuple((body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(body[5]))
        return JpegFrame(marker, int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"), sampling)


def declared_jpeg_frame(stream: BinaryIO, n_bytes: int) -> JpegFrame | None:
    """The frame that the JPEG file `stream` (`n_bytes` long) declares, read from its start by `jpeg_frame`
    (the stream's position is left as it was); ImageRefused when the file is too short to fill that frame.
    The one check of a JPEG's declared size against its data, made before anything is allocated, for both
    decoders: Pillow (`opened_image`) and decode_jpeg (`ingest/decode.py`).

    A Huffman-coded JPEG codes every 8 x 8 block of every component with at least one bit (each block's DC
    difference is a Huffman code of one bit or more), so a file of fewer bytes than ceil(blocks / 8), blocks
    being those of its first component, cannot hold the image its header declares. Decoders fill what is
    missing with grey and only warn: a 631-byte file whose header was edited to say 9000 x 9000 would become
    81 million grey pixels (and a batch of such files gigabytes). Arithmetic-coded JPEGs (SOF9 to SOF11, SOF13
    to SOF15) may code a block in less than a bit: they are not checked. None: no frame header was found
    (the decoder then fails on its own)."""
    start = stream.tell()
    try:
        stream.seek(0)
        frame = jpeg_frame(stream)
    finally:
        stream.seek(start)
    if frame is None or frame.arithmetic or not frame.sampling:
        return frame
    # the first component's size: the image's, scaled by its sampling factors (a factor of 0 is invalid: as 1)
    most_h = max(max(h for h, _ in frame.sampling), 1)
    most_v = max(max(v for _, v in frame.sampling), 1)
    first_h, first_v = (max(f, 1) for f in frame.sampling[0])
    width, height = -(-frame.width * first_h // most_h), -(-frame.height * first_v // most_v)
    least = -(-(-(-width // 8) * -(-height // 8)) // 8)  # bytes: one bit per block, rounded up
    if n_bytes < least:
        raise ImageRefused(f"declares {frame.width}x{frame.height} pixels but holds {n_bytes:,} bytes, too few for "
                           f"that size (a JPEG of that size holds at least {least:,}: a damaged or forged image)")
    return frame


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
    forever, or act on a device), and an image above `max_pixels`, or a JPEG too short for the size it
    declares (`declared_jpeg_frame`), is never decoded (its size comes from the header). max_pixels None: no
    limit. Pillow's own limit is ours while the block runs."""
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
            if image.format in ("JPEG", "MPO"):  # MPO: a JPEG with more pictures after the first
                declared_jpeg_frame(handle, os.fstat(handle.fileno()).st_size)
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
