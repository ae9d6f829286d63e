"""Disentangling a channel (METHOD.md sections 5 and 6) and recording the run in the store.

    split_sources   Ineq. 5: which l-1 channels feed concept 1, concept 2, or both
    rho_scores      Eq. 6 over the rho grid, on the l-1 feature maps of the two concepts
    DisentangledConv  layer l replaced by a widened conv and a fixed merge conv
    disentangle     all of it for one channel; disentangle_channels for several in one model
    load_model      the recorded model back from a run id
"""

from __future__ import annotations

import copy
import json
import os
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import polysem
from polysem.ingest.dataset import ImageRecord, ImageRecords, collate
from polysem.ingest.models import resolve_device, resolve_layer, resolve_model, resolve_transform
from polysem.constants import P, RHO_GRID, SCREEN_SPLIT, TAU
from polysem.errors import RunError, StoreBusy
from polysem.features import cached_class_maps, remap_paths
from polysem.query import layout
from polysem.query.store import Store, write_pending

OBJECTIVES = ("abs", "positive")
POSITIVE_EPS = 1e-5  # the reference code's denominator guard for the `positive` objective
LOGIT_TOLERANCE = 1e-4  # max |logit change| allowed, relative to max(1, max |logit|): float32 rounding
CHECK_IMAGES = 32


class RelevanceWarning(UserWarning):
    """A concept class for which the channel is not relevant (Ineq. 2); only raised with force."""


# -- the method ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceSplit:
    """Indices of the l-1 channels that feed concept 1 only, concept 2 only, or both."""

    sources1: tuple[int, ...]
    sources2: tuple[int, ...]
    shared: tuple[int, ...]


def split_sources(arv1: np.ndarray, arv2: np.ndarray, rho: float) -> SourceSplit:
    """Ineq. 5: i -> concept 1 when rho R1[i] > R2[i]; else concept 2 when rho R2[i] > R1[i]; else shared."""
    arv1, arv2 = np.asarray(arv1, np.float64), np.asarray(arv2, np.float64)
    to1 = rho * arv1 > arv2
    to2 = ~to1 & (rho * arv2 > arv1)
    index = np.arange(len(arv1))
    return SourceSplit(tuple(index[to1].tolist()), tuple(index[to2].tolist()), tuple(index[~to1 & ~to2].tolist()))


def concept_weights(weight: torch.Tensor, split: SourceSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight: C_{l-1} x kh x kw (one output channel). Returns the rows of c'1, c'2 and r."""
    w1, w2, wr = weight.clone(), weight.clone(), weight.clone()
    w1[list(split.sources2)] = 0
    w2[list(split.sources1)] = 0
    wr[list(split.sources1) + list(split.sources2)] = 0
    return w1, w2, wr


def rho_scores(maps1: np.ndarray, maps2: np.ndarray, layer: nn.Conv2d, channel: int, arv1, arv2,
               objective: str = "abs", grid=RHO_GRID, batch_size: int = 256) -> list[dict]:
    """Eq. 6 for each rho of the grid.

    maps1, maps2: N1 x C_{l-1} x H x W and N2 x ... feature maps of the concept images.
    Score = mean over concept-1 images of s(c'1)/s(c'2) + mean over concept-2 images of s(c'2)/s(c'1),
    s = sum over positions of |f| (objective 'abs', the paper) or of max(f, 0) with 1e-5 added to
    each denominator ('positive', the reference code). A rho whose score is not finite (a zero
    denominator under 'abs') gets None and is never chosen.
    """
    if objective not in OBJECTIVES:
        raise RunError(f"unknown objective '{objective}'; use abs (paper) or positive (reference code)")
    weight = layer.weight.detach().cpu().double()[channel]
    bias = layer.bias.detach().cpu().double()[channel] if layer.bias is not None else torch.zeros((), dtype=torch.float64)
    splits = [split_sources(arv1, arv2, rho) for rho in grid]
    kernels = torch.stack([w for s in splits for w in concept_weights(weight, s)[:2]])  # 2R x C x kh x kw
    biases = bias.expand(len(kernels)).contiguous()

    def ratios(maps: np.ndarray, first: int) -> torch.Tensor:
        """Per image and rho: s(own channel) / s(other channel); own = c'1 when first == 0."""
        out = []
        for start in range(0, len(maps), batch_size):
            x = torch.from_numpy(maps[start : start + batch_size]).double()
            f = F.conv2d(x, kernels, biases, layer.stride, layer.padding, layer.dilation)
            s = (f.abs() if objective == "abs" else f.clamp(min=0)).sum(dim=(2, 3)).view(len(x), len(grid), 2)
            own, other = s[..., first], s[..., 1 - first]
            out.append(own / (other + POSITIVE_EPS) if objective == "positive" else own / other)
        return torch.cat(out)

    score = ratios(maps1, 0).mean(0) + ratios(maps2, 1).mean(0)
    return [
        {"rho": rho, "objective_value": float(v) if np.isfinite(float(v)) else None,
         "n_sources1": len(s.sources1), "n_sources2": len(s.sources2)}
        for rho, v, s in zip(grid, score, splits)
    ]


def best_rho(scores: list[dict]) -> float:
    """The grid's argmax (the smallest rho on ties); None scores never win."""
    valid = [row for row in scores if row["objective_value"] is not None]
    if not valid:
        raise RunError("no rho of the grid gives a finite Eq. 6 objective; pass --rho VALUE or --objective positive")
    return max(valid, key=lambda row: row["objective_value"])["rho"]


class DisentangledConv(nn.Module):
    """Layer l split for k channels: `expanded` has C_l + 2k outputs, `merge` maps them back to C_l.

    For split j of channel c: expanded channel c is c'1, C_l + 2j is c'2, C_l + 2j + 1 is r, and
    merge computes c = c'1 + c'2 - r, which equals the original channel exactly (up to rounding).
    """

    def __init__(self, original: nn.Conv2d, channels: list[int], splits: list[SourceSplit]):
        super().__init__()
        out, k = original.out_channels, len(channels)
        self.channels = list(channels)
        self.expanded = nn.Conv2d(original.in_channels, out + 2 * k, original.kernel_size, original.stride,
                                  original.padding, original.dilation, bias=original.bias is not None)
        self.merge = nn.Conv2d(out + 2 * k, out, 1, bias=False)
        with torch.no_grad():
            weight = original.weight.detach().clone()
            extra = []
            for c, split in zip(channels, splits):
                w1, w2, wr = concept_weights(original.weight.detach()[c], split)
                weight[c] = w1
                extra += [w2, wr]
            self.expanded.weight.copy_(torch.cat([weight, torch.stack(extra)]) if extra else weight)
            if original.bias is not None:
                bias = original.bias.detach()
                self.expanded.bias.copy_(torch.cat([bias, bias[[c for c in channels for _ in (0, 1)]]]))
            merge = torch.zeros(out, out + 2 * k)
            merge[:, :out] = torch.eye(out)
            for j, c in enumerate(channels):
                merge[c, out + 2 * j] = 1.0
                merge[c, out + 2 * j + 1] = -1.0
            self.merge.weight.copy_(merge.view(out, out + 2 * k, 1, 1))
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def unit_index(self, channel: int, unit: str) -> int:
        """Index in `expanded`'s output of unit 'c1', 'c2' or 'r' of a disentangled channel."""
        j = self.channels.index(channel)
        return {"c1": channel, "c2": self.merge.out_channels + 2 * j, "r": self.merge.out_channels + 2 * j + 1}[unit]

    def forward(self, x):
        return self.merge(self.expanded(x))


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


# -- runs against a store -------------------------------------------------------------------------

@dataclass
class ChannelRequest:
    channel: int
    concept1: list  # class ids, folder names or class names
    concept2: list


@dataclass
class _Plan:
    channel: int
    concept1: list[int]
    concept2: list[int]
    arv1: np.ndarray = None
    arv2: np.ndarray = None
    rho: float = None
    scores: list[dict] = field(default_factory=list)
    split: SourceSplit = None


def base_model(store: Store):
    """The store's model with its recorded weights, the layer of interest and the transform."""
    meta = store.meta()
    resolved = resolve_model(meta["model"], meta["weights"])
    if resolved.weights_sha256 != meta["weights_sha256"]:
        raise RunError(f"the weights of {meta['model']} ({meta['weights']}) changed since ingest; restore them")
    layer = resolve_layer(resolved.model, meta["layer"])
    transform, _ = resolve_transform(meta["transform"])
    return resolved.model, meta["layer"], layer, transform


def resolve_classes(store: Store, values: list) -> list[int]:
    """Class ids from ids, folder names or class names (case-insensitive)."""
    classes = store.query("SELECT class_id, folder, name FROM classes").to_pylist()
    by_name = {}
    for row in classes:
        by_name.setdefault(row["folder"].lower(), row["class_id"])
        by_name.setdefault(row["name"].lower(), row["class_id"])
    ids = []
    for value in values:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            class_id = int(text)
            if not 0 <= class_id < len(classes):
                raise RunError(f"class id {class_id} is out of range; the store has classes 0..{len(classes) - 1}")
        elif text.lower() in by_name:
            class_id = by_name[text.lower()]
        else:
            raise RunError(f"unknown class '{text}'; see `polysem classes` for ids and names")
        if class_id not in ids:
            ids.append(class_id)
    return ids


def _validate(store: Store, request: ChannelRequest, out_channels: int, force: bool) -> _Plan:
    if not 0 <= request.channel < out_channels:
        raise RunError(f"channel {request.channel} is out of range; the layer has channels 0..{out_channels - 1}")
    concept1, concept2 = resolve_classes(store, request.concept1), resolve_classes(store, request.concept2)
    if not concept1 or not concept2:
        raise RunError("each concept needs at least one class: give --concept1 and --concept2")
    both = sorted(set(concept1) & set(concept2))
    if both:
        raise RunError(f"class {both[0]} is in both concepts; a class belongs to one concept")
    counts = {r["target"]: r["n"] for r in store.query(
        "SELECT target, count(*) AS n FROM samples WHERE split = ? GROUP BY target", [SCREEN_SPLIT]).to_pylist()}
    for class_id in concept1 + concept2:
        if not counts.get(class_id):
            raise RunError(f"class {class_id} has no {SCREEN_SPLIT} images in the store; ingest them first "
                           f"(polysem ingest DATA_DIR --split {SCREEN_SPLIT})")
    # filtering on the classes lets DuckDB read only their images
    relevant = set(store.query(
        "SELECT class_id FROM relevant_pairs() WHERE channel = ? AND list_contains(?, class_id)",
        [request.channel, concept1 + concept2]).column("class_id").to_pylist())
    missing = [c for c in concept1 + concept2 if c not in relevant]
    if missing:
        message = (f"channel {request.channel} is not relevant (tau {TAU}, p {P}) for class "
                   f"{', '.join(map(str, missing))}")
        if not force:
            raise RunError(message + "; pass --force to disentangle it anyway")
        warnings.warn(message, RelevanceWarning, stacklevel=3)
    return _Plan(request.channel, concept1, concept2)


def _concept_arv(store: Store, channel: int, classes: list[int]) -> np.ndarray:
    row = store.query("SELECT arv FROM concept_arv(?, ?)", [channel, classes]).to_pylist()[0]
    return np.array(row["arv"], dtype=np.float64)


def disentangle(store: Store | str | os.PathLike, channel: int, concept1: list, concept2: list, **options) -> dict:
    """Disentangle one channel into concept 1 and concept 2; returns the recorded run row."""
    return disentangle_channels(store, [ChannelRequest(channel, list(concept1), list(concept2))], **options)[0]


def disentangle_channels(store, requests: list[ChannelRequest], *, rho: float | str = "auto", objective: str = "abs",
                         data_dir=None, force: bool = False, device: str = "auto", batch_size: int = 64,
                         progress: bool = True) -> list[dict]:
    """Disentangle several channels into one model, check it, save it and record one run per channel."""
    store = store if isinstance(store, Store) else Store(store)
    store.require()
    if objective not in OBJECTIVES:
        raise RunError(f"unknown --objective '{objective}'; use abs (paper) or positive (reference code)")
    fixed_rho = None
    if rho != "auto":
        try:
            fixed_rho = float(rho)
        except ValueError:
            raise RunError(f"bad --rho '{rho}': use auto or a number in (0, 1]") from None
        if not 0 < fixed_rho <= 1:
            raise RunError(f"--rho must be in (0, 1], got {fixed_rho}")
    channels = [r.channel for r in requests]
    if len(set(channels)) != len(channels):
        raise RunError("a channel can be disentangled once per model; give each channel one request")
    out_channels = store.query("SELECT out_channels FROM layer_info").column(0)[0].as_py()
    plans = [_validate(store, request, out_channels, force) for request in requests]

    model, layer_name, layer, transform = base_model(store)
    run_device = resolve_device(device)
    model.to(run_device)
    for plan in plans:
        plan.arv1 = _concept_arv(store, plan.channel, plan.concept1)
        plan.arv2 = _concept_arv(store, plan.channel, plan.concept2)
        if fixed_rho is None:
            maps = [np.concatenate([cached_class_maps(store, model, layer, transform, c, SCREEN_SPLIT, run_device,
                                                      data_dir, batch_size, progress) for c in concept])
                    for concept in (plan.concept1, plan.concept2)]
            plan.scores = rho_scores(maps[0], maps[1], layer, plan.channel, plan.arv1, plan.arv2, objective)
            plan.rho = best_rho(plan.scores)
        else:
            plan.rho = fixed_rho
            split = split_sources(plan.arv1, plan.arv2, fixed_rho)
            plan.scores = [{"rho": fixed_rho, "objective_value": None,
                            "n_sources1": len(split.sources1), "n_sources2": len(split.sources2)}]
        plan.split = split_sources(plan.arv1, plan.arv2, plan.rho)

    # from a CPU copy: moving `layer` itself would move it out of the model still used on the device
    new_layer = DisentangledConv(copy.deepcopy(layer).cpu(), [p.channel for p in plans], [p.split for p in plans])
    disentangled = copy.deepcopy(model).cpu()
    replace_module(disentangled, layer_name, new_layer)
    max_diff, n_checked = check_equivalence(store, model, disentangled, plans, transform, run_device, data_dir, batch_size)
    return _record(store, plans, new_layer, layer_name, objective, max_diff, n_checked,
                   {"tau": TAU, "p": P, "force": force, "data_dir": str(data_dir) if data_dir else None,
                    "grid": list(RHO_GRID) if fixed_rho is None else None, "check_images": n_checked})


def check_equivalence(store: Store, model: nn.Module, disentangled: nn.Module, plans, transform, device,
                      data_dir=None, batch_size: int = 64) -> tuple[float, int]:
    """Max |logits_new - logits_old| on up to 32 stored images (concept images first); refuses a bad model."""
    classes = sorted({c for p in plans for c in p.concept1 + p.concept2})
    rows = store.query(
        "SELECT image_id, path, target FROM samples WHERE split = ? "
        "ORDER BY list_contains(?, target) DESC, image_id LIMIT ?", [SCREEN_SPLIT, classes, CHECK_IMAGES]
    ).to_pylist()
    rows = remap_paths(store, rows, SCREEN_SPLIT, data_dir)
    records = [ImageRecord(r["image_id"], r["path"], r["target"]) for r in rows]
    items = [ImageRecords(records, transform)[i] for i in range(len(records))]
    _, images, failures = collate(items)
    if failures:
        raise RunError(f"cannot read {records[failures[0][0]].path}: {failures[0][1]}")
    disentangled.to(device)
    with torch.no_grad():
        old = torch.cat([model(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
        new = torch.cat([disentangled(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
    disentangled.cpu()
    max_diff = float((new - old).abs().max())
    limit = LOGIT_TOLERANCE * max(1.0, float(old.abs().max()))
    if not max_diff <= limit:
        raise RunError(f"the disentangled model changes the logits by {max_diff:.3g} (> {limit:.3g}); nothing recorded")
    return max_diff, len(images)


def _record(store: Store, plans, new_layer: DisentangledConv, layer_name: str, objective: str, max_diff: float,
            n_checked: int, parameters: dict) -> list[dict]:
    """Write the artifact, keep its rows pending beside it, then record them.

    The finished model is never thrown away: if the catalog stays busy, the rows wait in
    `artifacts/<group>.pt.pending.json` and the next command that writes to the store
    records them (`Store.connect(write=True)`).
    """
    group_id = uuid.uuid4().hex[:10]
    artifact = Path("artifacts") / f"{group_id}.pt"
    with layout.atomic_path(store.path / artifact) as tmp:
        torch.save({"layer": layer_name, "channels": new_layer.channels,
                    "units": {c: {u: new_layer.unit_index(c, u) for u in ("c1", "c2", "r")} for c in new_layer.channels},
                    "state_dict": new_layer.state_dict()}, tmp)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    runs, scores = [], []
    for j, plan in enumerate(plans):
        run_id = group_id if len(plans) == 1 else f"{group_id}-{j}"
        runs.append({
            "run_id": run_id, "group_id": group_id, "created_at": now, "channel": plan.channel,
            "concept1": plan.concept1, "concept2": plan.concept2, "rho": plan.rho, "objective": objective,
            "sources1": list(plan.split.sources1), "sources2": list(plan.split.sources2),
            "shared": list(plan.split.shared), "max_logit_diff": max_diff, "artifact": str(artifact),
            "polysem_version": polysem.__version__, "parameters": parameters,
        })
        scores += [{"run_id": run_id, **score} for score in plan.scores]
    write_pending(store.path, artifact, {
        "runs": [{**run, "parameters": json.dumps(run["parameters"])} for run in runs], "rho_scores": scores})
    try:
        with store.connect(write=True):
            pass  # opening for writing records every pending artifact, this one included
    except StoreBusy as error:
        raise StoreBusy(f"{error}. The disentangled model is kept in {store.path / artifact} with its runs; "
                        "the next command that writes to the store records them, e.g. "
                        f"`polysem check --repair --store {store.path}`") from None
    return runs


def run_row(store: Store, run_id: str) -> dict:
    rows = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_pylist()
    if not rows:
        raise RunError(f"unknown run id '{run_id}'; `polysem runs` lists them")
    row = rows[0]
    row["parameters"] = json.loads(row["parameters"])
    return row


def load_model(store: Store | str | os.PathLike, run_id: str) -> nn.Module:
    """The disentangled model of a run (with every channel of its group), in eval mode.

    Needs only the store: the base model is rebuilt from the store's metadata and the
    disentangled layer is read from the run's artifact (a weights-only state_dict).
    """
    store = store if isinstance(store, Store) else Store(store)
    run = run_row(store, run_id)
    model, layer_name, layer, _ = base_model(store)
    saved = torch.load(store.path / run["artifact"], map_location="cpu", weights_only=True)
    group = store.query("SELECT * FROM runs WHERE group_id = ? ORDER BY run_id", [run["group_id"]]).to_pylist()
    splits = {r["channel"]: SourceSplit(tuple(r["sources1"]), tuple(r["sources2"]), tuple(r["shared"])) for r in group}
    new_layer = DisentangledConv(layer, saved["channels"], [splits[c] for c in saved["channels"]])
    new_layer.load_state_dict(saved["state_dict"])
    replace_module(model, layer_name, new_layer)
    return model.eval()
