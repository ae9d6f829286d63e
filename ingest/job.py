"""What one ingest writes and how (`IngestJob`), and what it reports (`IngestSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from polysem.ingest.dataset import SplitListing
from polysem.ingest.probe import Setup
from polysem.ingest.ranks import DEFAULT_RANK_TIMEOUT
from polysem.query import Store
from polysem.query.meta import DEFAULT_DECODE, DEFAULT_TARGET

__all__ = ["IngestJob", "IngestSummary"]


@dataclass
class IngestSummary:
    """What this process wrote: images already stored before it (`n_already`: in every layer), images attributed
    (`n_written`), per layer the rows written whose attributions are all zero (`n_zero`), images that could not be
    read (`n_errors`, the first few in `errors`), Parquet parts, where it ran, and warnings about what was stored
    (`warnings`)."""

    store: Path
    split: str
    n_already: int
    n_written: int = 0
    n_errors: int = 0
    parts: int = 0
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    errors: list[str] = field(default_factory=list)
    n_zero: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestJob:
    """What one ingest writes, and how."""

    store: Store
    split: str
    listing: SplitListing
    setup: Setup
    batch_size: int
    num_workers: int
    threads: int | None
    rows_per_part: int
    progress: bool
    compact: bool
    max_pixels: int | None = None  # the pixel limit; None: Pillow's
    decode: str = DEFAULT_DECODE  # pil or tensor (ingest/decode.py)
    rank_timeout: float = DEFAULT_RANK_TIMEOUT  # seconds (ingest/ranks.py)
    target: str = DEFAULT_TARGET  # label (the paper's) or predicted: which logit each image is attributed to
    first_layer: str = ""  # the store's first layer (its rows written before layer folders are in the split's)
    store_layers: tuple[str, ...] = ()  # the store's layers once this ingest has written: its own and the stored
