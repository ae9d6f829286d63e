"""Python objects in place of names: a map-style torch Dataset in place of an image folder, an `nn.Module` in
place of a model name (`polysem.ingest(store, dataset, model=net)`).

A store records what they were: its model as `object:<module>.<qualname>` (weights `object`, known by their
SHA-256 as any model's are), a split's root as `dataset:<module>.<qualname> of N items`, and its transform as
`dataset` (the items are model inputs already). It cannot rebuild them, so the commands that need them later
(disentangle, verify, evaluate, visualize, report, load_model) find them in this process's registry: `ingest`
puts the objects it was given there, and `use` gives them to a process that did not ingest (a notebook run
again), each checked against the store first (the model by its class and weights, a Dataset by its class and
length). The command line has no objects: it refuses such a store in one line naming the Python calls
(`ObjectsNeeded`).

A Dataset gives one row per index (image_id = the index, path `<split>[<index>]`); each item is a
(tensor C x H x W, int label) pair. The label is the class id, and a class's logit is its id: class names come
from the Dataset's `classes` when it has them, else the classes are the model's outputs, named by number.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from polysem.errors import (
    ArgumentError,
    ArgumentRange,
    DataError,
    ModelError,
    ObjectsNeeded,
    StoreError,
    StoreMismatch,
)
from polysem.ingest.identity import ResolvedModel, state_dict_sha256
from polysem.query.meta import DATASET_TRANSFORM
from polysem.util.checks import _got
from polysem.util.images import ImageRecord, ImageRecords, ImageRefused
from polysem.util.imports import OBJECT_PREFIX

__all__ = ["DATASET_TRANSFORM", "OBJECT_WEIGHTS", "DatasetItems", "DatasetSource", "ObjectsNeeded",
           "check_data_kind", "check_object_options", "collate_labelled", "data_object", "dataset_class_rows",
           "dataset_listing_parts", "dataset_mismatch", "dataset_root", "find_normalize", "ingest_model",
           "is_object_spec", "item_photo", "model_copy", "model_option", "object_spec", "probe_dataset",
           "record_images", "recorded_length", "registered_model", "remember", "store_source", "use"]

OBJECT_WEIGHTS = "object"  # the weights of a model object: its own, known by their SHA-256
_ROOT = re.compile(r"dataset:(?P<type>\S+) of (?P<length>\d+) items")
_ITEM = re.compile(r"(?P<split>.+)\[(?P<index>\d+)\]")
PAIR = "a (tensor C x H x W, int label) pair"


def type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def object_spec(model: nn.Module) -> str:
    """What a store records as the model of a model object: its class."""
    return OBJECT_PREFIX + type_name(model)


def is_object_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(OBJECT_PREFIX)


def dataset_root(dataset: Dataset) -> str:
    """What a store records as the root of a split made from a Dataset: its class and its length."""
    return f"dataset:{type_name(dataset)} of {len(dataset)} items"  # type: ignore[arg-type]


def recorded_length(root: Any) -> int | None:
    """The item count a split's recorded root names; None for an image folder."""
    match = _ROOT.fullmatch(root) if isinstance(root, str) else None
    return int(match["length"]) if match else None


def item_path(split: str, index: int) -> str:
    return f"{split}[{index}]"


# -- checking what ingest and `use` are given ------------------------------------------------------

def data_object(data: Any) -> Dataset | None:
    """`data` of ingest checked: a map-style Dataset (returned), or a folder path (None: listed as a folder)."""
    if isinstance(data, IterableDataset):
        raise ArgumentError(f"`data` must be a map-style Dataset (indexed, with a length), got the IterableDataset "
                            f"{type_name(data)}: polysem stores one row per index; give a map-style Dataset")
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise ArgumentError(f"`data` must be a map-style Dataset with a length (__len__), got {type_name(data)}")
        return data
    if isinstance(data, bytes) or not isinstance(data, (str, os.PathLike)):
        raise ArgumentError(f"`data` must be a folder path (str or pathlib.Path) or a map-style torch Dataset, "
                            f"got {_got(data)}")
    return None


def model_option(model: Any) -> tuple[str | None, nn.Module | None]:
    """`model` of ingest: (the spec the store records, the model object or None)."""
    if isinstance(model, nn.Module):
        return object_spec(model), model
    if model is not None and not isinstance(model, str):
        raise ArgumentError(f"`model` must be text (str), a torch.nn.Module or None, got {_got(model)}")
    return model, None


def check_transform_option(transform: Any) -> None:
    """`transform` of ingest names a callable; the callable itself is refused with the fix: the store records the
    name, for later commands and processes to import."""
    if callable(transform) and not isinstance(transform, str):
        raise ArgumentError(
            f"`transform` must be the text MODULE:NAME of a callable, which the store records for later commands to "
            f"import, got {_got(transform)}: define it in a module and pass \"module:name\", or give a Dataset "
            "whose items are tensors already")


def check_object_options(dataset: Dataset | None, model_object: nn.Module | None, *, weights: str | None,
                         transform: str | None, decode: str | None, classes: list[int] | None,
                         limit: int | None, num_workers: int) -> None:
    """The options that mean nothing for a model object (`weights`) or a Dataset (`transform`, `decode`,
    `classes`, `limit`), and workers a Dataset's class cannot reach, refused."""
    if model_object is not None and weights is not None:
        raise ArgumentRange(f"`weights` must be None with a model object: it brings its own weights, got {weights!r}")
    if dataset is None:
        return
    for name, value, why in (("transform", transform, "its items are model inputs already"),
                             ("decode", decode, "its items are tensors already"),
                             ("classes", classes, "wrap it in torch.utils.data.Subset for some of its items"),
                             ("limit", limit, "wrap it in torch.utils.data.Subset for some of its items")):
        if value is not None:
            raise ArgumentRange(f"`{name}` must be None for a Dataset ({why}), got {value!r}")
    _check_workers(dataset, num_workers)


def _check_workers(dataset: Dataset, num_workers: int) -> None:
    """DataLoader workers started by forkserver or spawn import the Dataset's class anew: one defined in
    `__main__` (a notebook, a script's top level) is not found there, and the workers would die mid-ingest."""
    from polysem.ingest.threads import WORKER_START_ENV

    method = os.environ.get(WORKER_START_ENV, "forkserver")
    if num_workers > 0 and type(dataset).__module__ == "__main__" and method != "fork":
        raise ArgumentRange(f"`num_workers` must be 0 for a Dataset defined in __main__ (a notebook or a script), "
                            f"got {num_workers}: DataLoader workers started by {method} cannot import its class; "
                            f"omit `num_workers`, move the class into a module, or set {WORKER_START_ENV}=fork")


def check_data_kind(existing: dict | None, dataset: Dataset | None) -> None:
    """A store holds rows of image folders or of Datasets, never both: their inputs are made apart (a transform
    on files, or the Datasets' own)."""
    if existing is None:
        return
    from_datasets = existing["transform"] == DATASET_TRANSFORM
    if from_datasets and dataset is None:
        raise StoreMismatch("the store's splits come from Datasets (its transform is `dataset`); ingest an image "
                            "folder into another `store`")
    if not from_datasets and dataset is not None:
        raise StoreMismatch(f"the store's splits come from image folders (transform {existing['transform']}); "
                            "ingest a Dataset into another `store`")


def dataset_mismatch(split: str, recorded: Any, dataset: Dataset) -> str | None:
    """Why `dataset` is not the one split `split` of a store was made from (its recorded root); None when it is."""
    described = dataset_root(dataset)
    if recorded == described:
        return None
    length = recorded_length(recorded)
    fix = "give the Dataset it was made from, or ingest this one as another `split` or into another `store`"
    if length is None:
        return f"split '{split}' of this store was ingested from the folder {recorded}, not a Dataset; {fix}"
    if length != len(dataset):  # type: ignore[arg-type]
        return (f"split '{split}' of this store was ingested from a Dataset of {length} items ({recorded}), not of "
                f"{len(dataset)}; {fix}")  # type: ignore[arg-type]
    return f"split '{split}' of this store was ingested from {recorded}, not {described}; {fix}"


def dataset_listing_parts(dataset: Dataset, split: str) -> tuple[str, list[str], list[ImageRecord]]:
    """A Dataset's split as ingest lists it: its root, its class names ([] without `classes`: the model's
    outputs, known after the probe) and one record per index, whose label the item brings (target -1 here)."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"`data` ({type_name(dataset)}) holds no items; give a Dataset of at least one")
    names = dataset_classes(dataset)
    return dataset_root(dataset), names or [], [ImageRecord(i, item_path(split, i), -1) for i in range(n)]


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names a Dataset carries (`classes`, as torchvision's datasets do), or None."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or len(classes) == 0:
        raise DataError(f"the Dataset's classes must be a non-empty list of class names (label i names class i), "
                        f"got {_got(classes)}; fix or remove its `classes` attribute")
    return [str(name) for name in classes]


def dataset_class_rows(names: list[str], n_outputs: int, model_name: str) -> list[dict]:
    """Rows of `classes` for a Dataset: class id = label = logit, named by `names` (else by number, one class per
    output of the model)."""
    if not names:
        names = [str(i) for i in range(n_outputs)]
    elif len(names) > n_outputs:
        raise DataError(f"the Dataset has {len(names)} classes (its classes attribute) but {model_name} has "
                        f"{n_outputs} outputs; a Dataset's class id is its logit: use a model with an output per class")
    return [{"class_id": i, "folder": name, "name": name, "wnid": None, "logit": i} for i, name in enumerate(names)]


def probe_dataset(dataset: Dataset, tries: int) -> tuple[torch.Tensor, list[int]]:
    """The first item's image and the labels of the first `tries` items, each checked to be a (tensor
    C x H x W, int) pair; anything else, or an item that fails, is refused in one line."""
    labels = []
    first = None
    for index in range(min(tries, len(dataset))):  # type: ignore[arg-type]
        try:
            item = dataset[index]
        except Exception as error:
            raise DataError(f"item {index} of `data` fails: {type(error).__name__}: {_first_line(error)}; fix the "
                            "Dataset") from error
        try:
            image, label = checked_item(item)
        except ImageRefused as refused:
            raise DataError(f"`data` must yield {PAIR} per index; item {index} is {refused}") from None
        labels.append(label)
        first = image if first is None else first
    assert first is not None  # an empty Dataset is refused when it is listed
    return first, labels


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


# -- items -----------------------------------------------------------------------------------------

def _label(value: Any) -> int | None:
    """A label as an int: an int, a numpy integer or a one-element integer tensor; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return None
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        return None


def _shape(value: Any) -> str:
    """What an item is, short: `(tensor 3 x 16 x 16, str)`."""
    if isinstance(value, torch.Tensor):
        return f"tensor {' x '.join(map(str, value.shape))}" if value.dim() else "tensor (a scalar)"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in value[:4]) + (", ..." if len(value) > 4 else "") + ")"
    return type(value).__name__


def checked_item(item: Any) -> tuple[torch.Tensor, int]:
    """(image, label) of a Dataset's item; `ImageRefused` naming what it is otherwise."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        image, label = item
        number = _label(label)
        if isinstance(image, torch.Tensor) and image.dim() == 3 and number is not None:
            return image, number
    raise ImageRefused(_shape(item))


def item_place(record: ImageRecord) -> tuple[str, int]:
    """(split, index) of a row made from a Dataset: its path is `<split>[<index>]`, the index its image id."""
    match = _ITEM.fullmatch(record.path)
    if match is None or int(match["index"]) != record.image_id:
        raise StoreError(f"the row of image {record.image_id} names {record.path!r}, no item of a Dataset split "
                         "(<split>[<image id>]); the store was edited: restore it from a backup")
    return match["split"], record.image_id


class DatasetItems(Dataset):
    """Records read from map-style Datasets by index, as `ImageRecords` reads files: (position, C x H x W tensor,
    None), or (position, None, reason) for an item that fails or is no (tensor, int) pair. With `labels` (ingest,
    which learns the labels from the items), each item's label follows (None for a failed one). A label outside
    0 .. n_classes - 1, or other than the record's target (a stored row's), is a failure too."""

    def __init__(self, datasets: Mapping[str, Dataset], records: list[ImageRecord], *, n_classes: int | None = None,
                 labels: bool = False):
        self.datasets = dict(datasets)
        self.records = records
        self.n_classes = n_classes
        self.labels = labels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, position: int):
        record = self.records[position]
        split, index = item_place(record)
        image, label, error = None, None, None
        try:
            image, label = self._item(split, index, record.target)
        except ImageRefused as refused:
            error = str(refused)
        except Exception as failure:  # noqa: BLE001 -- the Dataset's own failure: recorded, as an unreadable file
            error = f"{type(failure).__name__}: {_first_line(failure)}"
        return (position, image, error, label) if self.labels else (position, image, error)

    def _item(self, split: str, index: int, target: int) -> tuple[torch.Tensor, int]:
        item = self.datasets[split][index]
        try:
            image, label = checked_item(item)
        except ImageRefused as refused:
            raise ImageRefused(f"item {index} is {refused}, not {PAIR}") from None
        if self.n_classes is not None and not 0 <= label < self.n_classes:
            raise ImageRefused(f"item {index} has label {label}, no class id of the store (0 to {self.n_classes - 1})")
        if target >= 0 and label != target:
            raise ImageRefused(f"item {index} has label {label}, but the store holds it as class {target}: the Dataset "
                               "changed since it was ingested")
        return image, label


def collate_labelled(items):
    """`collate` for DatasetItems with labels: (groups, failures), each group (indices, N x C x H x W tensor,
    labels), one per image size."""
    groups: dict[tuple, list] = {}
    for i, image, error, label in items:
        if error is None:
            groups.setdefault(tuple(image.shape), []).append((i, image, label))
    batches = [([i for i, _, _ in members], torch.stack([image for _, image, _ in members]),
                [label for _, _, label in members]) for members in groups.values()]
    return batches, [(i, error) for i, _, error, _ in items if error is not None]


def find_normalize(transform: Any):
    """The torchvision Normalize a transform applies (itself, or a step of its Compose); None when it has none."""
    from torchvision import transforms
    from torchvision.transforms import v2

    steps = getattr(transform, "transforms", None)
    for step in steps if isinstance(steps, (list, tuple)) else [transform]:
        if isinstance(step, (transforms.Normalize, v2.Normalize)):
            return step
    return None


class DatasetSource:
    """What a store made from Datasets reads its rows through, in place of an image transform: each split's
    Dataset (`dataset_of(split)`), whose items are model inputs already. `normalize`: the Normalize that shows
    its items as images (given with `use`); None: the one in the split's Dataset's `transform`, if any."""

    def __init__(self, dataset_of: Callable[[str], Dataset], normalize: Any = None, n_classes: int | None = None):
        self.dataset_of = dataset_of
        self.normalize = normalize
        self.n_classes = n_classes

    def normalization(self, split: str):
        """The Normalize that made the split's items (undone to show them); None: they are shown as they are."""
        if self.normalize is not None:
            return self.normalize
        return find_normalize(getattr(self.dataset_of(split), "transform", None))

    def items(self, records: list[ImageRecord], *, labels: bool = False) -> DatasetItems:
        """The records' items; the Datasets of their splits are found first (`ObjectsNeeded` when one is not
        given), so a failure to find one is never taken for an unreadable item."""
        splits = sorted({item_place(record)[0] for record in records})
        return DatasetItems({split: self.dataset_of(split) for split in splits}, records, n_classes=self.n_classes,
                            labels=labels)


def record_images(records: list[ImageRecord], transform: Any) -> Dataset:
    """The Dataset that reads `records` as model inputs, (position, C x H x W tensor, None) or (position, None,
    reason): their image files through `transform`, or, for a store made from Datasets (a `DatasetSource`),
    the Datasets' items."""
    if isinstance(transform, DatasetSource):
        return transform.items(records)
    return ImageRecords(records, transform)


def item_photo(image: torch.Tensor, normalize: Any) -> tuple[Any, str]:
    """A Dataset item (C x H x W) as the picture a figure shows: H x W (one channel) or H x W x 3 uint8, with
    `normalize` undone (None: as the model gets it, clipped to [0, 1]); and a note on how it relates to the item."""
    x = image.detach().float().cpu()
    if normalize is not None:
        mean = torch.tensor(normalize.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(normalize.std, dtype=torch.float32).view(-1, 1, 1)
        x = x * std + mean
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    picture = pixels[0] if pixels.shape[0] < 3 else pixels[:3].permute(1, 2, 0)
    note = ("Dataset items, their Normalize undone" if normalize is not None else
            "Dataset items as the model gets them, clipped to [0, 1] (no Normalize to undo)")
    return picture.contiguous().numpy(), note


# -- the registry ----------------------------------------------------------------------------------

@dataclass
class _Given:
    """The objects a store was given in this process."""

    model: nn.Module | None = None
    datasets: dict[str, Dataset] = field(default_factory=dict)
    normalize: Any = None


_GIVEN: dict[str, _Given] = {}  # by the store's real path


def _key(store) -> str:
    return str(Path(store.path).resolve())


def remember(store, model: nn.Module | None = None, datasets: Mapping[str, Dataset] | None = None) -> None:
    """Keep the objects a store was made from (checked) for the later calls of this process."""
    given = _GIVEN.setdefault(_key(store), _Given())
    if model is not None:
        given.model = model
    given.datasets.update(datasets or {})


def model_copy(model: nn.Module) -> ResolvedModel:
    """The caller's model as polysem uses it: a copy in eval mode with frozen parameters, and its weights' hash.
    Only the copy changes (mode, device, gradients, a disentangled layer): the caller's module stays as it is."""
    try:
        copied = copy.deepcopy(model)
    except Exception as error:
        raise ModelError(f"the model object {type_name(model)} cannot be copied ({type(error).__name__}: "
                         f"{_first_line(error)}); polysem works on a copy so that yours stays as it is: make it "
                         "copyable (copy.deepcopy)") from error
    copied.eval()
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return ResolvedModel(copied, object_spec(model), OBJECT_WEIGHTS, state_dict_sha256(copied))


def registered_model(store, meta: dict) -> ResolvedModel:
    """A copy of the model object this process gave the store (by `ingest` or `use`)."""
    given = _GIVEN.get(_key(store))
    if given is None or given.model is None:
        raise ObjectsNeeded(f"the store's model is a Python object ({meta['model']})", "model=<that model>")
    if object_spec(given.model) != meta["model"]:
        raise StoreMismatch(f"the model object given for this store is a {type_name(given.model)}, but the store "
                            f"holds {meta['model']}; give it the model it was made from with polysem.use")
    return model_copy(given.model)


def ingest_model(store, existing: dict | None, spec: str, model_object: nn.Module | None) -> ResolvedModel:
    """The model of an ingest whose model is an object: the one given, else the one this process gave the store."""
    if model_object is not None:
        return model_copy(model_object)
    return registered_model(store, existing or {"model": spec})


def _registered_dataset(store, split: str, root: Any) -> Dataset:
    given = _GIVEN.get(_key(store))
    dataset = given.datasets.get(split) if given is not None else None
    if dataset is None:
        raise ObjectsNeeded(f"split '{split}' of the store comes from a Dataset ({root})",
                            f"data={{'{split}': <that Dataset>}}")
    problem = dataset_mismatch(split, root, dataset)
    if problem is not None:
        raise StoreMismatch(problem)
    return dataset


def store_source(store, meta: dict) -> DatasetSource:
    """A store made from Datasets read through the Datasets this process gave it."""
    roots = meta["dataset_roots"]

    def dataset_of(split: str) -> Dataset:
        if recorded_length(roots.get(split)) is None:
            raise StoreError(f"split '{split}' of this store names no Dataset ({roots.get(split)}), though its "
                             "transform is `dataset`; the store was edited: restore it from a backup")
        return _registered_dataset(store, split, roots[split])

    given = _GIVEN.get(_key(store))
    return DatasetSource(dataset_of, given.normalize if given is not None else None)


def _check_normalize(normalize: Any):
    """`normalize` as a torchvision Normalize: (mean, std), one number per channel each, or a Normalize."""
    from torchvision import transforms

    if normalize is None:
        return None
    found = find_normalize(normalize)
    pair = (found.mean, found.std) if found is not None else normalize
    expected = "(mean, std), each a list of numbers (one per channel), a torchvision Normalize, or None"
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ArgumentError(f"`normalize` must be {expected}, got {_got(normalize)}")
    values = []
    for part in pair:
        part = part.tolist() if isinstance(part, torch.Tensor) else part
        if not isinstance(part, (tuple, list)) or not part or any(
                isinstance(v, bool) or not isinstance(v, numbers.Real) for v in part):
            raise ArgumentError(f"`normalize` must be {expected}, got {_got(normalize)}")
        values.append([float(v) for v in part])
    mean, std = values
    if len(mean) != len(std) or not all(math.isfinite(v) for v in mean) or not all(
            math.isfinite(s) and s > 0 for s in std):
        raise ArgumentRange(f"`normalize` must be (mean, std) of one length, finite, every std above 0, got "
                            f"{_got(normalize)}")
    return transforms.Normalize(mean, std)


def _dataset_dict(data: Any) -> dict[str, Dataset]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ArgumentError(f"`data` must be a dict of split name -> map-style torch Dataset, or None, got "
                            f"{_got(data)}")
    for split, dataset in data.items():
        if not isinstance(split, str):
            raise ArgumentError(f"`data` must be a dict of split name (str) -> map-style torch Dataset, got "
                                f"{_got(split)} as a split name")
        if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
            raise ArgumentError(f"`data` must be a dict of split name -> map-style torch Dataset, got "
                                f"{_got(dataset)} for '{split}'")
    return dict(data)


def use(store, *, model: nn.Module | None = None, data: Mapping[str, Dataset] | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
    """Give this process the Python objects a store was made from, for every later call on it (`disentangle`,
    `verify`, `evaluate`, `visualize`, `report`, `load_model`, `ingest` of a later split). `ingest` keeps the
    objects it is given itself: `use` is for a process that did not ingest (a notebook run again).

    Args:
        store: the store, or its folder.
        model: the model object the store was made from: the same class with the same weights (checked by their
            SHA-256, the store's `weights_sha256`).
        data: {split: Dataset} for splits made from Datasets: each the same class with the same length as
            ingested (checked).
        normalize: (mean, std), or a torchvision Normalize: what the figures and visualisations undo to show the
            Datasets' items as images; None: the Normalize found in each Dataset's `transform`, if any.

    Example:
        >>> polysem.use(store, model=net, data={"train": train_set, "val": val_set})
        >>> polysem.verify(store, run_id).resolved
        True
    """
    from polysem.query.store import as_store

    store = as_store(store)
    if model is not None and not isinstance(model, nn.Module):
        raise ArgumentError(f"`model` must be a torch.nn.Module or None, got {_got(model)}")
    datasets = _dataset_dict(data)
    normalize = _check_normalize(normalize)
    store.require()
    meta = store.meta(any_layer=True)
    if model is not None:
        _check_model_object(meta, model)
    if normalize is not None and meta["transform"] != DATASET_TRANSFORM:
        raise StoreMismatch(f"`normalize` shows a Dataset's items; this store's images are files, shown as they are "
                            f"(its transform {meta['transform']} makes the model's inputs): omit `normalize`")
    for split, dataset in datasets.items():
        root = meta["dataset_roots"].get(split)
        if root is None:
            raise StoreMismatch(f"the store has no split '{split}' (it has {', '.join(meta['dataset_roots']) or 'none'})"
                                "; ingest it with polysem.ingest(store, dataset, split=...)")
        problem = dataset_mismatch(split, root, dataset)
        if problem is not None:
            raise StoreMismatch(problem)
    remember(store, model, datasets)
    if normalize is not None:
        _GIVEN[_key(store)].normalize = normalize


def _check_model_object(meta: dict, model: nn.Module) -> None:
    if not is_object_spec(meta["model"]):
        raise StoreMismatch(f"the store's model is {meta['model']}, which it builds itself; `model` is for a store "
                            "made from a model object")
    if object_spec(model) != meta["model"]:
        raise StoreMismatch(f"the store holds `model`={meta['model']}, not {object_spec(model)}; give the model it "
                            "was made from")
    if state_dict_sha256(model) != meta["weights_sha256"]:
        raise StoreMismatch(f"`model` has other weights than the store's (sha256 {meta['weights_sha256'][:12]}): "
                            "give the model it was made from, with the weights it had then")

