"""Synthetic JPEGs shaped like ImageNet's, for the benchmarks that run the model on images.

Class folders are real ImageNet-1k WordNet ids (polysem/data/imagenet_class_index.json, in logit
order), so ResNet-50's 1000 outputs map to them as they would on ImageNet itself (no classes.json).
Sizes vary around 500 x 375 (ImageNet's most common shape; a fifth portrait), quality 90. The
pixels are smooth random colour fields plus grain: something a JPEG decoder must work on, not a
photograph (real photos carry more detail, so their files are larger; decode time follows pixels
more than bytes). Not a benchmark itself.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in logit order."""
    text = resources.files("polysem").joinpath("data/imagenet_class_index.json").read_text()
    index = json.loads(text)
    return [index[str(i)][0] for i in range(len(index))]


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) around 500 x 375, portrait one time in five."""
    long_side = int(rng.integers(450, 501))
    short_side = int(round(long_side * rng.uniform(0.66, 0.80)))
    return (short_side, long_side) if rng.random() < 0.2 else (long_side, short_side)


def write_split(root: Path, split: str, classes: int, per_class: int, seed: int = 0) -> int:
    """DATA/SPLIT/<wnid>/<n>.JPEG for the first `classes` wnids, `per_class` each; returns the bytes written."""
    rng = np.random.default_rng([seed, len(split)])
    total = 0
    for wnid in imagenet_wnids()[:classes]:
        folder = root / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width, height = image_size(rng)
            base = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), dtype=np.int16)
            grain = rng.normal(0, 10, size=smooth.shape)
            pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
            path = folder / f"{wnid}_{i:05d}.JPEG"
            Image.fromarray(pixels).save(path, quality=90)
            total += path.stat().st_size
    return total
