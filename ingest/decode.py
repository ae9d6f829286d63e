"""How ingest turns image files into model inputs: `pil` (the default) or `tensor` (`--decode`).

`pil`: torchvision's PIL pipeline, in the DataLoader (workers or this process): Pillow decodes, then the
store's transform (for `imagenet`: Resize(256), CenterCrop(224), ToTensor, Normalize).

`tensor`, for the `imagenet` transform only: the DataLoader reads each file's bytes (and checks its header
for the pixel limit); this process decodes every batch's JPEGs at once with torchvision.io.decode_jpeg on
the ingest's device (nvJPEG on CUDA, libjpeg-turbo on the CPU), then resizes (shorter side 256, bilinear,
antialiased), centre-crops 224 and normalises with ImageNet's mean and std, all as tensors on that device
(torchvision.transforms.v2.functional). The CPU and CUDA run this same code; only `device` differs. Images
decode_jpeg does not take in a batch (PNG, grayscale or CMYK JPEGs) are decoded on the CPU in the
DataLoader (`polysem.util.images.read_for_decoding`); a JPEG the batch decoder refuses is decoded alone,
then on the CPU (decode_image), and is an ingest error when that fails too.

A batch is decoded and preprocessed in chunks of at most `DECODE_BUDGET` pixels, counted as each image's
header declares them before anything is allocated (`decode_batch`), so that the decoded images held at once
stay bounded whatever the batch size; the model still gets the whole batch at once. An image above the
budget on its own, and a JPEG too short for the size it declares (`declared_jpeg_frame`, the check Pillow's
path makes too), is an ingest error.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from polysem.errors import ModelError, StoreMismatch
from polysem.ingest.models import CROP_SIZE, DEFAULT_TRANSFORM, IMAGENET_MEAN, IMAGENET_STD, RESIZE_SIZE
from polysem.ingest.objects import DatasetSource, collate_labelled
from polysem.query.meta import DECODERS, DEFAULT_DECODE
from polysem.util.checks import check_choice
from polysem.util.images import (
    EncodedImages,
    ImageRecord,
    ImageRecords,
    ImageRefused,
    collate,
    collate_encoded,
    declared_jpeg_frame,
)

__all__ = ["DECODERS", "DECODE_BUDGET", "DEFAULT_DECODE", "Loading", "check_decode", "check_device_decoder",
           "decode_batch", "decode_images", "imagenet_batch", "loading"]

# Pixels (width x height, as the headers declare them) that one chunk of a batch decodes at once, which bounds
# the decoded images held at once: 3 bytes a pixel (384 MiB), twice while images of one size are stacked for
# their resize. Above Pillow's limit (the default --max-pixels, 89,478,485), so every image that limit admits
# fits in a chunk; an ImageNet batch of 256 (about 28 million pixels) is decoded in one call.
DECODE_BUDGET = 2**27


def check_decode(decode: str | None, transform: str | None, *, stored: bool = False,
                 stores_transform: bool = False) -> None:
    """`decode` is pil, tensor or None (the store's, else pil); tensor only with the default transform.
    `stored`: both are the store's, which were edited if they disagree (ingest never records the pair);
    `stores_transform`: the transform is the store's, not one the user gave."""
    check_choice("decode", decode, DECODERS, none=True)
    if decode == "tensor" and transform not in (None, DEFAULT_TRANSFORM):
        if stored:
            raise StoreMismatch(f"the store records decode tensor with its own transform {transform}, a pair ingest "
                                "never records (the catalog was edited); ingest into a new `store`")
        given = f"the store's transform {transform}" if stores_transform else f"`transform`={transform}"
        raise ModelError(f"`decode`=tensor decodes and preprocesses for the default transform only (resize "
                         f"{RESIZE_SIZE}, crop {CROP_SIZE}, ImageNet normalisation), not {given}; "
                         "use `decode`=pil with your own transform")


def _tiny_jpeg() -> torch.Tensor:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buffer, format="JPEG", quality=90)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def check_device_decoder(device: torch.device) -> None:
    """A JPEG made here is decoded in a batch on `device` before anything is written: a torchvision without
    nvJPEG (or a device it cannot decode on) is refused in one line, not found at the first batch."""
    try:
        images = decode_images([_tiny_jpeg()], device, retry=False)
    except Exception as error:  # noqa: BLE001 -- whatever torchvision raises, the fix is the same
        other = "" if device.type == "cpu" else ", or `device`=cpu"
        raise ModelError(f"`decode`=tensor cannot decode JPEGs on {device} ({type(error).__name__}: "
                         f"{_message(error)}); use `decode`=pil{other}") from None
    if not isinstance(images[0], torch.Tensor) or tuple(images[0].shape) != (3, 16, 16):
        raise ModelError(f"`decode`=tensor decoded a 16 x 16 JPEG on {device} as {images[0]!r}; use `decode`=pil")


_SOURCE = re.compile(r"^\w+, \S+:\d+, ")  # torchvision's "decode_jpeg, /path/decode_jpeg.cpp:171, " prefix


def _message(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
    return _SOURCE.sub("", text)


def decode_images(payloads: list[torch.Tensor], device: torch.device, *, retry: bool = True
                  ) -> list[torch.Tensor | str]:
    """Each payload as a 3 x H x W uint8 image on `device`, or the reason it is unreadable.

    A 1-D payload is a JPEG's bytes: all of them go to one batched decode_jpeg on `device`. When that
    fails (a corrupt or truncated file among them), each is decoded alone on `device`, then, if that
    fails, by decode_image on the CPU; a file that fails both is unreadable. A 3-D payload was decoded on
    the CPU already (read_for_decoding) and is moved to `device`. `retry` False: a failure raises."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images: list[torch.Tensor | str] = [p.to(device, non_blocking=True) if p.dim() == 3 else "" for p in payloads]
    encoded = [i for i, p in enumerate(payloads) if p.dim() == 1]
    if not encoded:
        return images
    try:
        decoded: list = decode_jpeg([payloads[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
    except Exception:
        if not retry:
            raise
        decoded = [_decode_alone(payloads[i], device) for i in encoded]  # one bad file fails the batch
    for i, image in zip(encoded, decoded, strict=True):
        images[i] = image
    return images


def _decode_alone(data: torch.Tensor, device: torch.device) -> torch.Tensor | str:
    """A JPEG the batch refused: alone on `device`, else by decode_image on the CPU, else the reason."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except Exception:  # noqa: BLE001 -- not for decode_jpeg: the CPU's decode_image next
        try:
            return decode_image(data, mode=ImageReadMode.RGB).to(device)
        except Exception as error:  # noqa: BLE001 -- corrupt or truncated: an ingest error, as with PIL
            return f"{type(error).__name__}: {_message(error)}"


def _declared_pixels(payload: torch.Tensor, budget: int) -> int | str:
    """The pixels decoding `payload` yields (a JPEG's as its header declares them; an image decoded already, its
    own), or why it is refused: a JPEG too short for its declared size, or more pixels than `budget`."""
    if payload.dim() == 3:
        width, height = payload.shape[2], payload.shape[1]
    else:
        try:
            frame = declared_jpeg_frame(io.BytesIO(payload.numpy().data), payload.numel())
        except ImageRefused as refused:
            return str(refused)
        if frame is None:  # no frame header: decode_jpeg fails on it; alone in its chunk all the same
            return budget
        width, height = frame.width, frame.height
    if width * height > budget:
        return (f"{width} x {height} = {width * height:,} pixels, above the {budget:,} that --decode tensor decodes "
                "at once; shrink the image, or ingest it into a store decoded with --decode pil")
    return width * height


def _chunks(pixels: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """The positions of (position, pixels) in runs, in order, each of at most `budget` pixels."""
    chunks: list[list[int]] = []
    total = budget + 1
    for position, count in pixels:
        if total + count > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(position)
        total += count
    return chunks


def decode_batch(payloads: list[torch.Tensor], device: torch.device, budget: int | None = None
                 ) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """A loaded batch (JPEG bytes and images decoded already, as `read_for_decoding` gives them) as the default
    transform's inputs on `device`: (positions kept, N x 3 x 224 x 224 float32 in that order or None, and
    (position, reason) for each image refused or unreadable, in order).

    Decoded and preprocessed in chunks of at most `budget` pixels (default `DECODE_BUDGET`), counted from
    each JPEG's header before anything is allocated, so that a batch of large images, or of files whose headers
    declare sizes their data cannot fill, never asks for more memory than one chunk. A JPEG that cannot fill
    its declared size (`declared_jpeg_frame`) and an image above `budget` are refused. The inputs equal those
    of one chunk: each image is decoded and resized on its own either way."""
    budget = DECODE_BUDGET if budget is None else budget
    failures: list[tuple[int, str]] = []
    pixels: list[tuple[int, int]] = []
    for position, payload in enumerate(payloads):
        counted = _declared_pixels(payload, budget)
        if isinstance(counted, str):
            failures.append((position, counted))
        else:
            pixels.append((position, counted))
    kept: list[int] = []
    inputs: list[torch.Tensor] = []
    for chunk in _chunks(pixels, budget):
        images = decode_images([payloads[p] for p in chunk], device)
        failures += [(p, image) for p, image in zip(chunk, images, strict=True) if isinstance(image, str)]
        decoded = [(p, image) for p, image in zip(chunk, images, strict=True) if isinstance(image, torch.Tensor)]
        if decoded:
            kept += [p for p, _ in decoded]
            inputs.append(imagenet_batch([image for _, image in decoded]))
        del images, decoded  # the chunk's decoded images go before the next chunk's are made
    batch = None if not inputs else inputs[0] if len(inputs) == 1 else torch.cat(inputs)
    return kept, batch, sorted(failures)


def imagenet_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """The default transform on uint8 3 x H x W images, as tensors on their device: shorter side to 256
    (bilinear, antialiased; the longer side int(256 * long / short), as Resize(256)), centre crop 224 (the
    same anchor as CenterCrop), scaled to [0, 1], normalised with ImageNet's mean and std. Images of one
    size are resized together. Returns N x 3 x 224 x 224 float32, in the order given."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    out = torch.empty(len(images), 3, CROP_SIZE, CROP_SIZE, dtype=torch.float32, device=images[0].device)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    for members in by_size.values():
        batch = torch.stack([images[i] for i in members])
        batch = F.resize(batch, [RESIZE_SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
        batch = F.center_crop(batch, [CROP_SIZE, CROP_SIZE])
        batch = F.to_dtype(batch, torch.float32, scale=True)
        out[members] = F.normalize(batch, list(IMAGENET_MEAN), list(IMAGENET_STD))
    return out


# Batches each DataLoader worker loads ahead (DataLoader's prefetch_factor; with workers only). `pil`: torch's
# default, 2: its batches are decoded float images (0.6 MB per 224 x 224 image) held in shared memory, and
# pinned again on a GPU, so 8 workers x 2 batches of 256 already hold 2.5 GB; when the workers are the limit
# (ImageNet on a GPU, docs/benchmarks.md) more batches ahead add memory, not speed. `tensor`: 4: its batches
# are the files' bytes (about a tenth of that), the workers only read, and this process decodes; 4 per worker
# keep a batch ready through a slow read (a cold file, a network disk) at a tenth of `pil`'s memory per batch.
PREFETCH = {"pil": 2, "tensor": 4}


@dataclass
class Loading:
    """What the DataLoader runs (`dataset`, `collate_fn`, `prefetch_factor`) and what this process does to each
    loaded batch (`finish(loaded, device)` -> (groups, failures): groups of (indices, N x C x H x W tensor,
    labels), the labels a Dataset's items bring, None for files, whose labels are their folders))."""

    dataset: torch.utils.data.Dataset
    collate_fn: Callable
    finish: Callable
    prefetch_factor: int = PREFETCH[DEFAULT_DECODE]


def _pil_finish(loaded, device: torch.device):
    groups, failures = loaded  # decoded and transformed in the DataLoader already
    return [(indices, images, None) for indices, images in groups], failures


def _labelled_finish(loaded, device: torch.device):
    return loaded  # a Dataset's items, with their labels


def _tensor_finish(loaded, device: torch.device):
    groups, failures = loaded
    out = []
    with record_function("ingest.decode"):
        for indices, payloads in groups:
            kept, inputs, failed = decode_batch(payloads, device)
            failures = failures + [(indices[p], reason) for p, reason in failed]
            if inputs is not None:
                out.append(([indices[p] for p in kept], inputs, None))
    return out, failures


def loading(decode: str, records: list[ImageRecord], transform: Callable | DatasetSource, import_root: str | None,
            max_pixels: int | None) -> Loading:
    """The ingest's loading for `decode` (pil or tensor) over `records`; for a Dataset (`transform` a
    DatasetSource), its items and their labels."""
    if isinstance(transform, DatasetSource):
        return Loading(transform.items(records, labels=True), collate_labelled, _labelled_finish, PREFETCH["pil"])
    if decode == "tensor":
        return Loading(EncodedImages(records, max_pixels=max_pixels), collate_encoded, _tensor_finish,
                       PREFETCH["tensor"])
    return Loading(ImageRecords(records, transform, import_root=import_root, max_pixels=max_pixels), collate,
                   _pil_finish, PREFETCH["pil"])
