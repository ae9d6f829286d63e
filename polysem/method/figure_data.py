"""The data behind a run's figures: its most activating val images, their patches and its visualisations.

Everything that runs the model or reads files is here; `polysem.figures.plots` only draws
what this module hands it. The photos are the image files as the user knows them
(not the normalised model input), brought to the model input's geometry; a Dataset's items
are shown with their Normalize undone (`photo_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from polysem.constants import EVAL_SPLIT, GAMMA, TAU, P
from polysem.errors import PolysemError, RunError, StoreError
from polysem.method.evaluation import WHOLE_TOP, top_class_histograms
from polysem.query.store import Store

__all__ = ["PAPER_CHANNELS", "PAPER_LAYER", "WHOLE_SHOWN", "WHOLE_TOP", "Patch", "ReportData", "RunFigures", "RunReport", "UnitImages", "WholeImage", "WholePicture", "WholeUnit", "class_names", "photo_as_input", "photo_of", "report_data", "run_figure_data", "run_order", "top_images", "unit_labels", "visualisation_images", "whole_top_images"]

TOP, SHOWN = 16, 6
WHOLE_SHOWN = 6  # of each unit's WHOLE_TOP most activating val images over every class, drawn with their photos


@dataclass
class Patch:
    """One shown image of a unit: the photo (H x W or H x W x 3 uint8) at the model input's geometry,
    the receptive field of the unit's most activating position (None when every position is equal, or for a
    Linear's unit, `no_field`) and its crop (the whole photo without a field)."""

    image_id: int
    class_name: str
    concept: int
    activation: float
    photo: np.ndarray
    box: tuple[int, int, int, int] | None
    crop: np.ndarray
    bias_only: bool
    no_field: bool = False  # a Linear's unit over tokens or positions: no receptive-field box, the whole image


@dataclass
class UnitImages:
    unit: str
    label: str
    patches: list[Patch] = field(default_factory=list)

    @property
    def bias_only(self) -> bool:
        """True when the unit carries only its bias on every shown image: it saw none of them."""
        return bool(self.patches) and all(p.bias_only for p in self.patches)


def class_names(store: Store) -> dict[int, str]:
    return store.class_names()


def unit_labels(run: dict, names: dict[int, str]) -> dict[str, str]:
    """original, c1..ck and r of a run, each with what it stands for."""
    return {"original": f"original channel {run['channel']}",
            **{f"c{j}": f"c'{j} (concept {j}: {' + '.join(names[c] for c in concept)})"
               for j, concept in enumerate(run["concepts"], start=1)},
            "r": "r (residual)"}


def photo_of(path: str, image: torch.Tensor, transform, split: str) -> tuple[np.ndarray, str]:
    """What a figure shows of a stored image: its file brought to the model input's geometry (`photo_as_input`),
    or a Dataset's item (`image`, C x H x W as the model got it) with its Normalize undone; and a note on how it
    relates to the model input."""
    from polysem.ingest.objects import DatasetSource, item_photo

    if isinstance(transform, DatasetSource):
        return item_photo(image, transform.normalization(split))
    return photo_as_input(path, transform, *image.shape[-2:])


def photo_as_input(path: str, transform, height: int, width: int) -> tuple[np.ndarray, str]:
    """The image file with the transform's geometric steps (resize, crop, pad) applied, sized H x W.

    Returns the pixels and a note on how they relate to the model input.
    """
    from PIL import Image
    from torchvision import transforms

    with Image.open(path) as opened:
        image = opened.convert("L") if opened.mode in ("L", "I", "I;16", "1") else opened.convert("RGB")
    ops = transform.transforms if isinstance(transform, transforms.Compose) else []
    geometric = [op for op in ops if isinstance(op, (transforms.Resize, transforms.CenterCrop, transforms.Pad))]
    for op in geometric:
        image = op(image)
    note = "photos as files, resized and cropped like the model input" if geometric else "photos as files"
    if image.size != (width, height):
        image = image.resize((width, height))
        note = f"photos as files, resized to the model input ({height} x {width}); the transform's crop is not reproduced"
    return np.asarray(image), note


def top_images(store: Store, run: dict, activations: list[dict], data_dir=None, device: str = "auto",
               top: int = TOP, shown: int = SHOWN) -> tuple[dict[str, UnitImages], dict]:
    """For the original channel and c'1..c'k: `shown` of the `top` most activating val images
    (balanced between the concepts that appear), each with its most activating patch; a Linear's unit (over
    tokens or positions) has no receptive-field box, so it shows the whole image (`facts["no_field"]`).

    activations: rows of `run_activations` (every val image of the run's concept classes).
    Returns ({unit: UnitImages}, caption facts).
    """
    from polysem.ingest.models import resolve_device, stored_transform
    from polysem.ingest.objects import record_images
    from polysem.ingest.units import is_linear, layer_positions, unit_maps
    from polysem.method.disentangling import DisentangledLayer
    from polysem.method.features import remap_paths
    from polysem.method.receptive_field import receptive_fields
    from polysem.method.runs import load_model
    from polysem.util.hooks import forward_to
    from polysem.util.images import ImageRecord, collate_one_size

    names = class_names(store)
    labels = unit_labels(run, names)
    meta = store.meta()
    transform = stored_transform(store, meta).fn
    k = len(run["concepts"])
    chosen = {}
    for j, unit in enumerate(["original", *(f"c{j}" for j in range(1, k + 1))]):
        def value(r, j=j):
            return r["activation"] if j == 0 else r["activations"][j - 1]

        ranked = sorted(activations, key=lambda r: (-value(r), r["image_id"]))[:top]
        chosen[unit] = (value, _balanced(ranked, shown))
    rows = {r["image_id"]: r for _, picked in chosen.values() for r in picked}
    facts = {"split": EVAL_SPLIT, "n_images": len(activations), "top": top, "shown": shown,
             "classes": {j: [names[c] for c in concept] for j, concept in enumerate(run["concepts"], start=1)},
             "photo_note": ""}
    units = {u: UnitImages(u, labels[u]) for u in chosen}
    if not rows:
        return units, facts
    ordered = remap_paths(store, sorted(rows.values(), key=lambda r: r["image_id"]), EVAL_SPLIT, data_dir)
    reader = record_images([ImageRecord(r["image_id"], r["path"], r["target"]) for r in ordered], transform)
    _, images, failures = collate_one_size([reader[i] for i in range(len(ordered))])
    if failures:
        raise RunError(f"cannot read {ordered[failures[0][0]]['path']}: {failures[0][1]}")
    model = load_model(store, run["run_id"]).to(resolve_device(device))
    layer = cast(DisentangledLayer, model.get_submodule(meta["layer"]))
    no_field = is_linear(layer.expanded)
    index = {r["image_id"]: i for i, r in enumerate(ordered)}
    with torch.no_grad():
        out = forward_to(model, layer.expanded, images.to(next(model.parameters()).device)).double().cpu()
    if no_field:  # N x C' x P: a conv's maps stay N x C' x H x W for the position of the maximum
        out = unit_maps(out, layer.expanded, layer_positions(meta["layer_shape"]))
    index_of = {u: layer.unit_index(run["channel"], u) for u in [*(f"c{j}" for j in range(1, k + 1)), "r"]}
    bias = layer.expanded.bias.detach().double().cpu() if layer.expanded.bias is not None else None
    maps = {u: out[:, i] for u, i in index_of.items() if u != "r"}
    maps = {"original": sum(maps.values()) - (k - 1) * out[:, index_of["r"]], **maps}
    # c = sum_j c'_j - (k - 1) r and all of them carry the original bias, so the original's bias is that bias too
    biases = {u: 0.0 if bias is None else float(bias[index_of["c1"]]) for u in maps}
    height, width = images.shape[-2:]
    photos = {r["image_id"]: photo_of(r["path"], images[index[r["image_id"]]], transform, EVAL_SPLIT)
              for r in ordered}
    facts["photo_note"] = next(iter(photos.values()))[1]
    wanted = {}
    for unit, (_value, picked) in chosen.items():
        for row in picked:
            fmap = maps[unit][index[row["image_id"]]]
            if not no_field and float(fmap.max() - fmap.min()) > 1e-9 * max(1.0, float(fmap.abs().max())):
                wanted[(unit, row["image_id"])] = divmod(int(fmap.argmax()), fmap.shape[1])
    boxes = {} if no_field else receptive_fields(model.cpu(), layer.expanded, tuple(images.shape[1:]),
                                                 list(wanted.values()))
    # the receptive field's full size: a field clipped at the image border is padded to it, so a row's patches
    # are one size and line up; a field as large as the image is said to be the whole image
    full = (max([b[2] - b[0] for b in boxes.values()] + [0]), max([b[3] - b[1] for b in boxes.values()] + [0]))
    facts["whole_field"] = no_field or (bool(boxes) and all(b == (0, 0, height, width) for b in boxes.values()))
    facts["no_field"] = no_field
    facts["padded"] = False
    for unit, (value, picked) in chosen.items():
        for row in picked:
            fmap = maps[unit][index[row["image_id"]]]
            photo = photos[row["image_id"]][0]
            position = wanted.get((unit, row["image_id"]))
            box = boxes[position] if position is not None else None
            crop = photo[box[0]:box[2], box[1]:box[3]] if box else photo
            if box and (crop.shape[0], crop.shape[1]) != full:
                crop = pad_to_field(crop, box, full, (height, width))
                facts["padded"] = True
            bias_only = float((fmap - biases[unit]).abs().max()) <= 1e-9 * max(1.0, abs(biases[unit]))
            units[unit].patches.append(Patch(row["image_id"], names[row["target"]], row["concept"], float(value(row)),
                                             photo, box, crop, bias_only, no_field))
    return units, facts


def _balanced(ranked: list[dict], shown: int) -> list[dict]:
    """Up to `shown` rows, spread evenly over the concepts that appear (each concept's best first),
    in activation order; a concept with fewer rows leaves its share to the others."""
    by_concept: dict[int, list[dict]] = {}
    for row in ranked:
        by_concept.setdefault(row["concept"], []).append(row)
    picked: list[dict] = []
    depth = 0
    while len(picked) < min(shown, len(ranked)):
        for concept in sorted(by_concept):
            if depth < len(by_concept[concept]) and len(picked) < shown:
                picked.append(by_concept[concept][depth])
        depth += 1
    chosen = {id(r) for r in picked}
    return [r for r in ranked if id(r) in chosen]


@dataclass
class WholeImage:
    """One shown image of a unit's whole-split top: its class, the run's concept of the class (None: none)."""

    image_id: int
    class_id: int
    class_name: str
    concept: int | None
    activation: float
    photo: np.ndarray


@dataclass
class WholeUnit:
    """A unit's top images over every class of the split: `top` (rank, image_id, class_id, name, concept,
    activation; its n most activating), `histogram` (their classes, `top_class_histograms`) and `shown`
    (the first few, with photos). own: the run's concept the unit stands for (None for the original
    channel, which stands for all of them)."""

    unit: str
    label: str
    own: int | None
    top: list[dict]
    histogram: list[dict]
    shown: list[WholeImage] = field(default_factory=list)


@dataclass
class WholePicture:
    """What `polysem.figures.plots.whole_picture` draws: per unit its top images over every class of the split."""

    run: dict
    split: str
    n: int  # the top n asked for
    n_images: int  # images of the split
    concepts: dict[int, list[str]]  # concept j -> its class names
    units: dict[str, WholeUnit]
    photo_note: str = ""


def whole_top_images(store: Store, run: dict, data_dir=None, n: int = WHOLE_TOP, shown: int = WHOLE_SHOWN,
                     split: str = EVAL_SPLIT) -> WholePicture:
    """For the original channel and c'1..c'k: the `n` most activating images of `split` over every class (not
    only the run's concept classes), their class histogram, and the photos of the first `shown`.

    The activations are SQL (`unit_top_images`: the units' weight rows against the stored input sums);
    only the photos of the shown images are read, no model runs.
    """
    from polysem.ingest.models import stored_transform
    from polysem.ingest.objects import record_images
    from polysem.method.features import remap_paths
    from polysem.util.images import ImageRecord

    names = class_names(store)
    labels = unit_labels(run, names)
    histograms = top_class_histograms(store, run["run_id"], n, split)
    tops: dict[str, list[dict]] = {}
    for row in store.reads.top_images_of_run(run_id=run["run_id"], limit=n, split=split).to_pylist():
        tops.setdefault(row.pop("unit"), []).append(row)
    units = {u: WholeUnit(u, labels[u], None if u == "original" else int(u[1:]), top, histograms.units.get(u, []))
             for u, top in tops.items()}
    picture = WholePicture(run, split, n, histograms.n_images,
                           {j: [names[c] for c in concept] for j, concept in enumerate(run["concepts"], start=1)},
                           units)
    wanted = {r["image_id"]: r for unit in units.values() for r in unit.top[:shown]}
    if not wanted:
        return picture
    rows = remap_paths(store, sorted(wanted.values(), key=lambda r: r["image_id"]), split, data_dir)
    transform = stored_transform(store, store.meta()).fn
    records = record_images([ImageRecord(r["image_id"], r["path"], r["class_id"]) for r in rows], transform)
    photos = {}
    for i, row in enumerate(rows):
        _, tensor, error = records[i]
        if error is not None:
            raise RunError(f"cannot read {row['path']}: {error}")
        photos[row["image_id"]], picture.photo_note = photo_of(row["path"], tensor, transform, split)
    for unit in units.values():
        unit.shown = [WholeImage(r["image_id"], r["class_id"], r["name"], r["concept"], float(r["activation"]),
                                 photos[r["image_id"]]) for r in unit.top[:shown]]
    return picture


def visualisation_images(store: Store, rows: list[dict]) -> dict[str, np.ndarray]:
    """{image path: pixels} of recorded visualisation rows (`visualize.latest_visualizations`): one per unit
    and seed; a failed unit (image NULL) has none."""
    from PIL import Image

    images = {}
    for row in rows:
        if row["image"] is None:
            continue
        path = (store.path / row["image"]).resolve()
        if not path.is_relative_to((store.path / "artifacts" / "visualizations").resolve()):
            raise StoreError(f"a visualisation row names the image {row['image']!r}, outside the store's "
                             "artifacts/visualizations; the store is damaged or was edited: restore it from a backup")
        if path.is_file():
            with Image.open(path) as opened:
                images[row["image"]] = np.asarray(opened.convert("L") if opened.mode == "L" else opened.convert("RGB"))
    return images


@dataclass
class RunFigures:
    """Everything a run's figures show: its val activations, top images with patches, visualisations."""

    run: dict
    names: dict[int, str]
    labels: dict[str, str]
    activations: list[dict]
    units: dict[str, UnitImages]
    facts: dict
    vis_rows: list[dict]
    vis_images: dict[str, np.ndarray]
    layer: str
    whole: WholePicture | None = None  # every unit's top images over all classes of the split


def run_figure_data(store: Store, run: dict, activations: list[dict], data_dir=None,
                    device: str = "auto") -> RunFigures:
    """Gather what `polysem.figures.plots.run_figures` draws for a run (runs the model on its top images)."""
    from polysem.method.visualize import latest_visualizations

    names = class_names(store)
    units, facts = top_images(store, run, activations, data_dir, device)
    vis_rows = latest_visualizations(store, run["run_id"])
    return RunFigures(run, names, unit_labels(run, names), activations, units, facts, vis_rows,
                      visualisation_images(store, vis_rows), store.meta()["layer"],
                      whole_top_images(store, run, data_dir))


@dataclass
class RunReport:
    run: dict
    figures: RunFigures | None  # None when the store has no val images of the run's classes
    verification: dict | None = None  # tau, p, gamma, n_images of the recorded `polysem verify`
    tau: float | None = None  # the tau of the run's recorded evaluation (None: not evaluated)
    selection: str = "ineq2"  # how the recorded evaluation selected its images (ineq2 or authors)
    verdicts: list[dict] = field(default_factory=list)  # per new unit (verification_verdicts)


@dataclass
class ReportData:
    """What the report page shows, gathered from the store (`polysem.figures.page` draws it)."""

    info: dict
    classes: list[dict]
    names: dict[int, str]
    pairs: list[dict] | None
    pairs_error: str | None
    wordnet_points: list[tuple[float, float, int, int]] | None
    wordnet_error: str | None
    runs: list[RunReport]
    thresholds: tuple[float, float, float] = (TAU, P, GAMMA)  # the screening section's tau, p, gamma
    thresholds_source: str = "the paper's"  # whose they are, in words


def screening_thresholds(store: Store, given: tuple[float | None, float | None, float | None]
                         ) -> tuple[tuple[float, float, float], str]:
    """The report's screening thresholds (tau, p, gamma) and whose they are: each given one, else the store's
    latest run's (what the user last disentangled with), else the paper's."""
    from polysem.method.runs import Run

    rows = store.reads.run_list().to_pylist()
    latest = max(rows, key=lambda row: (row["created_at"], row["run_id"])) if rows else None
    own = Run.from_row(latest).thresholds if latest else (TAU, P, GAMMA)
    used = tuple(mine if value is None else value for value, mine in zip(given, own, strict=True))
    if all(value is not None for value in given):
        source = "given"
    elif latest is not None:
        source = f"run {latest['run_id']}'s (the latest)" + (", some given" if any(v is not None for v in given)
                                                                else "")
    else:
        source = "the paper's" + (", some given" if any(v is not None for v in given) else "")
    return (float(used[0]), float(used[1]), float(used[2])), source


def report_data(store: Store, data_dir=None, device: str = "auto",
                given: tuple[float | None, float | None, float | None] = (None, None, None)) -> ReportData:
    """Everything the report page shows; a screening or WordNet step that cannot run leaves its reason. The
    screening section is at `given` thresholds, each missing one the latest run's (`screening_thresholds`)."""
    from polysem.method.evaluation import selection_params
    from polysem.method.runs import run_row
    from polysem.method.wordnet import similarity_points
    from polysem.query.screening import polysemantic_pairs

    info = store.info()
    meta = store.meta()
    (tau, p, gamma), source = screening_thresholds(store, given)
    pairs = pairs_error = points = points_error = None
    try:
        pairs = polysemantic_pairs(store, tau=tau, p=p, gamma=gamma).to_pylist()
    except PolysemError as error:
        pairs_error = str(error)
    try:
        points = similarity_points(store, tau, p)
    except PolysemError as error:
        points_error = str(error)
    runs = []
    for row in run_order(store.reads.run_summaries().to_pylist(), meta):
        on_layer = store.for_layer(run_row(store, row["run_id"]).layer)  # each run on its own layer
        recorded = run_row(on_layer, row["run_id"])
        run = {**recorded.to_dict(), "summary": row}  # the figures read plain data
        evaluated = on_layer.reads.evaluation_tau_of_run(run_id=run["run_id"])
        selection = evaluated["selection"] if evaluated else "ineq2"
        params = selection_params(on_layer, recorded, selection, data_dir=data_dir, device=device, progress=False)
        activations = on_layer.reads.selected_activations_of_run(  # densities over the images the evaluation selected
            run_id=run["run_id"], split=EVAL_SPLIT, **params).to_pylist()
        runs.append(RunReport(run, run_figure_data(on_layer, run, activations, data_dir, device) if activations
                              else None,
                              verification=on_layer.reads.verification_of_run(run_id=run["run_id"]),
                              verdicts=on_layer.reads.run_verdicts(run_id=run["run_id"]).to_pylist(),
                              tau=evaluated["tau"] if evaluated else None, selection=selection))
    return ReportData(info, store.reads.class_list().select(["class_id", "folder", "name", "wnid"]).to_pylist(),
                      class_names(store), pairs, pairs_error, points, points_error, runs, (tau, p, gamma), source)


BEYOND_BORDER = 128  # the grey a patch is padded with where its receptive field lies beyond the image border


def pad_to_field(crop: np.ndarray, box: tuple[int, int, int, int], full: tuple[int, int],
                 image: tuple[int, int]) -> np.ndarray:
    """A patch cut at the image border, padded with grey on the border's side(s) to the receptive field's full
    size (H x W, or H x W x 3), so that it shows at the scale of the other patches."""
    missing_h, missing_w = full[0] - crop.shape[0], full[1] - crop.shape[1]
    top = missing_h if box[0] == 0 and box[2] < image[0] else (missing_h // 2 if box[0] == 0 else 0)
    left = missing_w if box[1] == 0 and box[3] < image[1] else (missing_w // 2 if box[1] == 0 else 0)
    pads = [(top, missing_h - top), (left, missing_w - left)] + [(0, 0)] * (crop.ndim - 2)
    return np.pad(crop, pads, constant_values=BEYOND_BORDER)


# The channels of ResNet-50 layer4.2.conv3 in the order of the paper's table (docs/method.md).
PAPER_CHANNELS = (522, 1404, 895, 242, 1660, 1349, 1832, 1773, 1698)
PAPER_LAYER = ("resnet50", "layer4.2.conv3")


def run_order(runs: list[dict], meta: dict) -> list[dict]:
    """The paper's channels first in its order (for its model and layer), then the store's order."""
    paper = (meta.get("model"), meta.get("layer")) == PAPER_LAYER
    rank = {c: i for i, c in enumerate(PAPER_CHANNELS)} if paper else {}
    return [r for _, r in sorted(enumerate(runs), key=lambda ir: (rank.get(ir[1]["channel"], len(rank)), ir[0]))]
