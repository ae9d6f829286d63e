"""What an ingest is asked for, checked and reconciled with what the store recorded, before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from polysem.errors import ArgumentError, ArgumentRange, DataError, StoreMismatch
from polysem.ingest.dataset import SplitListing
from polysem.ingest.objects import dataset_mismatch
from polysem.ingest.threads import cores_per_process, default_num_workers
from polysem.query import Store
from polysem.query.confine import check_tree
from polysem.query.meta import (
    DEFAULT_DECODE,
    DEFAULT_TARGET,
    POSITIONS,
    TARGETS,
    layer_positions,
    meta_complete,
    recorded_decode,
    recorded_target,
)
from polysem.util.checks import BATCH_MAX, COUNT_MAX, check_int, check_text
from polysem.util.images import pillow_max_pixels

__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_MODEL",
    "ROWS_PER_PART_MAX",
    "Settings",
    "check_counts",
    "check_listing",
    "check_max_pixels",
    "check_positions_choice",
    "check_target",
    "existing_meta",
    "layer_list",
    "reconcile_settings",
]

DEFAULT_MODEL = "resnet50"
DEFAULT_LAYER = "layer4.2.conv3"
ROWS_PER_PART_MAX = 2**20  # rows a part holds in memory before it is written (about 10 GB at ResNet-50's layer4)


@dataclass(frozen=True)
class Settings:
    """The model, weights, layer, transform, decoder and target an ingest runs with: the user's, or the store's."""

    model: str
    weights: str | None
    layers: tuple[str, ...]  # every layer this ingest stores, in the order given (a new store's first is its first)
    transform: str | None
    decode: str
    target: str = DEFAULT_TARGET  # label or predicted (query.meta.TARGETS)
    positions: str | None = None  # which positions of a Linear layer not stored yet count; None: the default


def existing_meta(store: Store) -> dict | None:
    """The store's recorded metadata; None for a new store. A store holding a link or a special file is
    refused first (`query.confine`): a FIFO catalog is no missing one."""
    check_tree(store.path)
    existing = store.meta(require_complete=False, any_layer=True) if store.exists() else None
    if existing is not None and not meta_complete(existing):
        existing = None  # a first ingest stopped before its metadata was committed: start over
    return existing


def check_listing(store: Store, existing: dict | None, listing: SplitListing, split: str) -> None:
    """A split of an existing store has the store's class folders (a Dataset: its classes), and comes from the
    folder it came from (a Dataset: one of the same class and length)."""
    if existing is None:
        return
    known = store.reads.class_list().column("folder").to_pylist()
    if known != listing.folders:
        what = "the classes of the Dataset" if listing.dataset is not None else f"class folders of {listing.root}"
        raise DataError(
            f"{what} differ from the store's {len(known)} classes "
            f"({_first_difference(known, listing.folders)}); use the same classes in every split"
        )
    recorded_root = existing["dataset_roots"].get(split)
    if recorded_root is not None and listing.dataset is not None:
        problem = dataset_mismatch(split, recorded_root, listing.dataset)
        if problem is not None:
            raise DataError(problem)
    elif recorded_root is not None and recorded_root != str(listing.root):
        raise DataError(f"split '{split}' of this store was ingested from {recorded_root}, not {listing.root}; "
                        "ingest this folder as another `split`, or into another `store`")


def check_counts(batch_size: int, num_workers: int | None, limit: int | None, rows_per_part: int,
                   threads: int | None) -> tuple[int, int, int | None, int, int | None]:
    """The counts of an ingest, each in its range (docs/ingest.md), as ints: batch_size, num_workers (its
    default when None), limit, rows_per_part, threads. Workers and threads: at most 4 x the cores here."""
    cores = cores_per_process()
    most = f" (4 x the {cores} cores this process may use)"
    batch_size = check_int("batch_size", batch_size, 1, BATCH_MAX)
    num_workers = check_int("num_workers", num_workers, 0, 4 * cores, none=True,
                            hint=f"; 0 loads the images in this process, at most 4 x the {cores} cores here")
    limit = check_int("limit", limit, 1, COUNT_MAX, none=True, hint=" (images per class); omit it for all images")
    threads = check_int("threads", threads, 1, 4 * cores, none=True,
                        hint=f"{most}; omit it to choose from the cores")
    rows_per_part = check_int("rows_per_part", rows_per_part, 1, ROWS_PER_PART_MAX)
    num_workers = default_num_workers() if num_workers is None else num_workers
    return batch_size, num_workers, limit, rows_per_part, threads


def check_max_pixels(max_pixels: int | None) -> int | None:
    """The pixel limit of this ingest: `max_pixels`, or Pillow's (None when Pillow's is turned off)."""
    if max_pixels is None:
        return pillow_max_pixels()
    return check_int("max_pixels", max_pixels, 1, COUNT_MAX,
                     hint=f" pixels; omit it for Pillow's limit ({pillow_max_pixels()})")


def reconcile_settings(existing: dict | None, model: str | None, weights: str | None, layers: list[str] | None,
                       transform: str | None, decode: str | None, target: str | None = None,
                       positions: str | None = None) -> Settings:
    """The settings of this ingest: the options given, else the store's (a new store: the defaults). An option
    that contradicts what the store recorded is refused. `layers`: the layers to store (default: every layer the
    store holds; a new store: the default layer); one the store lacks is added to it."""
    check_target(target)
    check_positions_choice(positions)
    if existing is None:
        return Settings(model or DEFAULT_MODEL, weights, tuple(layers or [DEFAULT_LAYER]), transform,
                        decode or DEFAULT_DECODE, target or DEFAULT_TARGET, positions)
    stored = existing.get("layers") or {existing["layer"]: existing["layer_shape"]}
    for option, given, recorded in (("model", model, existing["model"]),
                                    ("transform", transform, existing["transform"]),
                                    ("decode", decode, recorded_decode(existing)),
                                    ("target", target, recorded_target(existing))):
        if given is not None and given != recorded:
            why = ""
            if option == "decode":  # the pixels differ: a store's rows must all come from one decoder
                why = " (a store made before `decode` existed was decoded with pil)" if "decode" not in existing \
                    else " (one decoder per store: their pixels differ)"
            if option == "target":  # relevance and ARVs mix nothing: every row attributed to one kind of logit
                why = " (one target per store: its attributions are of one kind of logit)"
            raise StoreMismatch(
                f"the store holds `{option}`={recorded}{why}, not {given}; omit `{option}` or use another `store`"
            )
    for name in layers or stored:
        recorded = layer_positions(stored[name]) if name in stored else None
        if positions is not None and recorded is not None and positions != recorded:
            raise StoreMismatch(f"the store holds layer {name} with `positions`={recorded} (one choice of positions per "
                                f"layer: its sums are over those), not {positions}; omit `positions` or use another "
                                "`store`")
    return Settings(existing["model"], weights or existing["weights"], tuple(layers or stored),
                    existing["transform"], recorded_decode(existing), recorded_target(existing), positions)


def layer_list(layer: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """`layer`: one dotted name or a list of them, each once (None: the store's layers, or the default)."""
    if layer is None:
        return None
    names = [layer] if isinstance(layer, str) else layer
    if not isinstance(names, (list, tuple)):
        raise ArgumentError(f"`layer` must be text (str) or a list of text, got {type(layer).__name__} {layer!r}")
    if not names:
        raise ArgumentRange("`layer` must be one layer name or a list of at least one, got []")
    for name in names:
        check_text("layer", name)
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise ArgumentRange(f"`layer` must be layers named once each, got {repeated} twice")
    return list(names)


def check_positions_choice(positions: str | None) -> None:
    """`positions`: all, cls or patch (which tokens of a Linear layer count, `ingest.units`), or None."""
    check_text("positions", positions, none=True)
    if positions is not None and positions not in POSITIONS:
        raise ArgumentRange(f"`positions` must be one of {', '.join(POSITIONS)} (which tokens of a Linear layer "
                            f"count), got {positions!r}")


def check_target(target: str | None) -> None:
    """`target`: label (each image's own class logit, the paper's), predicted (its argmax logit), or None."""
    check_text("target", target, none=True)
    if target is not None and target not in TARGETS:
        raise ArgumentRange(f"`target` must be label (the image's class, the paper's) or predicted (the model's "
                            f"argmax), got {target!r}")


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference: class {i} is '{x}' in the store, '{y}' here"
    return f"{len(a)} classes in the store, {len(b)} here"
