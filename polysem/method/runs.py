"""Disentangling channels of a store's model and recording the runs (`polysem disentangle`).

    disentangle           one channel into its concepts; disentangle_channels for several in one model
    disentangle_candidates  the first channels of a list of candidates that split (`--from-screen`)
    requests_from_screen  the channels with the most dissimilar concepts (polysem.method.concepts), all concepts each
    load_model            the recorded model back from a run id
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from polysem.constants import GAMMA, RHO_GRID, SCREEN_SPLIT, TAU, P
from polysem.errors import ArgumentError, RunError, StoreBusy, StoreError
from polysem.ingest.attribution import exact_math
from polysem.ingest.models import (
    resolve_device,
    resolve_layer,
    stored_code,
)
from polysem.ingest.objects import record_images
from polysem.ingest.units import UnitLayer, is_linear, layer_positions
from polysem.method.concepts import channel_concepts
from polysem.method.disentangling import (
    OBJECTIVES,
    DisentangledLayer,
    RelevanceWarning,
    SourceSplit,
    best_rho,
    bias_only_concepts,
    disentangled_layer,
    positive_only,
    replace_module,
    rho_scores,
    split_sources,
)
from polysem.method.features import ModelPass, cached_class_maps, check_data_dir, remap_paths
from polysem.query.recovery import pending_records, write_pending
from polysem.query.screening import check_thresholds, require_counted_once
from polysem.query.store import Store, as_store
from polysem.util import atomic
from polysem.util.checks import (
    BATCH_MAX,
    COUNT_MAX,
    check_bool,
    check_class_list,
    check_class_lists,
    check_int,
    check_path,
    check_real,
    check_text,
)
from polysem.util.images import ImageRecord, collate
from polysem.util.results import Result
from polysem.version import __version__

__all__ = ["CHECK_IMAGES", "LOGIT_TOLERANCE", "ChannelRequest", "Run", "RunSettings", "base_model", "check_candidate_options", "check_equivalence", "disentangle", "disentangle_candidates", "disentangle_channels", "disentangle_runs", "layer_from_artifact", "load_model", "requests_from_screen", "resolve_classes", "run_row"]

# what `_record` writes: a 10-hex group id, "-j" for the j-th channel of a group; its model in artifacts/
RUN_ID = re.compile(r"[0-9a-f]{10}(-[0-9]+)?")
ARTIFACT = re.compile(r"artifacts/[0-9a-f]{10}\.pt")
LOGIT_TOLERANCE = 1e-4  # max |logit change| allowed, relative to max(1, max |logit|): float32 rounding
CHECK_IMAGES = 32


@dataclass
class ChannelRequest:
    channel: int
    concepts: list[list]  # k >= 2 concepts, each a list of class ids, folder names or class names


@dataclass
class _Plan:
    channel: int
    concepts: list[list[int]]
    arvs: list[np.ndarray] | None = None  # arvs, rho and split: None until `_split` sets them
    rho: float | None = None
    scores: list[dict] = field(default_factory=list)
    split: SourceSplit | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Run(Result):
    """A recorded run: one disentangled channel (a row of the store's `runs` table).

    Args (fields):
        run_id: the run's id, 10 hex digits; "<group_id>-<j>" for the j-th channel of a model of several.
        group_id: the id of the model the run belongs to (10 hex digits), its file `artifacts/<group_id>.pt`.
        created_at: when it was recorded (UTC, no time zone).
        channel: the split channel of the layer of interest (0 .. C_l - 1).
        concepts: k >= 2 concepts, each a list of class ids.
        rho: the source threshold of Eq. 5, in (0, 1] (chosen by Eq. 6 over the grid, or given).
        objective: "abs" (the paper's Eq. 6) or "positive" (the reference code's).
        sources: k lists of l-1 channel indices, concept j's own inputs (c'_j reads them, the others do not).
        shared: the l-1 channel indices every c'_j and r read.
        max_logit_diff: max |logit change| of the disentangled model on `parameters["check_images"]` stored
            images (logit units; refused above 1e-4 x max(1, max |logit|)).
        artifact: the model's file, relative to the store (`artifacts/<group_id>.pt`).
        polysem_version: the version that recorded it.
        parameters: the settings as recorded: tau, p, gamma, force, data_dir, grid, check_images, from_screen
            (`thresholds` reads the first three).
        warnings: what the run warned about (a concept channel that equals the residual, ...).
        layer: the layer whose channel was split (dotted name).

    Returns (of `to_dict()`): every field, and for two concepts also `concept1`, `concept2`, `sources1` and
    `sources2` (the JSON of `polysem disentangle --format json`).

    Example:
        >>> run = polysem.disentangle(store, 1660, concept1=[530], concept2=[938])
        >>> run.run_id, run.rho, [len(s) for s in run.sources]
        ('3f2a9c01bd', 0.35, [41, 57])
    """

    run_id: str
    group_id: str
    created_at: datetime
    channel: int
    concepts: list[list[int]]
    rho: float
    objective: str
    sources: list[list[int]]
    shared: list[int]
    max_logit_diff: float
    artifact: str
    polysem_version: str
    parameters: dict[str, Any]
    warnings: list[str]
    layer: str | None = None

    @property
    def thresholds(self) -> tuple[float, float, float]:
        """(tau, p, gamma) the run was made with: what `verify`, `evaluate` and the report use for it unless
        told otherwise. A run recorded without gamma was made at the paper's (it had no other)."""
        params = self.parameters or {}
        return (float(params.get("tau", TAU)), float(params.get("p", P)), float(params.get("gamma", GAMMA)))

    @property
    def concept1(self) -> list[int] | None:
        """The first concept's classes of a run of two concepts; None for more."""
        return self.concepts[0] if len(self.concepts) == 2 else None

    @property
    def concept2(self) -> list[int] | None:
        """The second concept's classes of a run of two concepts; None for more."""
        return self.concepts[1] if len(self.concepts) == 2 else None

    @property
    def sources1(self) -> list[int] | None:
        """The first concept's own l-1 channels of a run of two concepts; None for more."""
        return self.sources[0] if len(self.sources) == 2 else None

    @property
    def sources2(self) -> list[int] | None:
        """The second concept's own l-1 channels of a run of two concepts; None for more."""
        return self.sources[1] if len(self.sources) == 2 else None

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        if len(self.concepts) == 2:
            record |= {"concept1": self.concept1, "concept2": self.concept2, "sources1": self.sources1,
                       "sources2": self.sources2}
        return record

    @classmethod
    def from_row(cls, row: dict) -> Run:
        """A run from its catalog row; a run id or artifact that polysem cannot have written (a damaged or
        hostile catalog) is refused before it names a file."""
        if not isinstance(row.get("run_id"), str) or not RUN_ID.fullmatch(row["run_id"]):
            raise StoreError(f"the catalog holds a run id polysem never writes ({row.get('run_id')!r}); the store "
                             "is damaged or was edited: restore it from a backup, or run `polysem check`")
        artifact = row.get("artifact")
        if not isinstance(artifact, str) or not ARTIFACT.fullmatch(artifact):
            raise StoreError(f"run {row['run_id']} names the model file {artifact!r}, not one of the store's "
                             "artifacts/<id>.pt; the store is damaged or was edited: restore it from a backup")
        parameters = row["parameters"]
        values = {f.name: row[f.name] for f in fields(cls)}
        return cls(**{**values, "parameters": json.loads(parameters) if isinstance(parameters, str) else parameters})


def base_model(store: Store):
    """The store's model with its recorded weights, the layer of interest (a Conv2d, or a Linear applied per token
    or position) and the transform. A store made from Python objects: a copy of the model object and a reader of
    the Datasets this process gave it (`polysem.use`, ingest/objects.py)."""
    meta = store.meta()
    resolved, transform = stored_code(store, meta)  # refuses code the store names from inside itself
    if resolved.weights_sha256 != meta["weights_sha256"]:
        raise RunError(f"the weights of {meta['model']} ({meta['weights']}) changed since ingest; restore them")
    layer = resolve_layer(resolved.model, meta["layer"])
    return resolved.model, meta["layer"], layer, transform.fn


def resolve_classes(store: Store, values: list) -> list[int]:
    """Class ids from ids, folder names or class names (case-insensitive)."""
    classes = store.reads.class_list().to_pylist()
    by_name: dict[str, int] = {}
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


@dataclass(frozen=True)
class _Options:
    """The validated settings every channel of one run shares."""

    fixed_rho: float | None  # None: rho by Eq. 6 over the grid
    objective: str
    force: bool
    data_dir: str | os.PathLike | None
    batch_size: int
    progress: bool
    tau: float
    p: float
    gamma: float = GAMMA

    def parameters(self, check_images: int, from_screen: bool = False) -> dict:
        """The run's recorded `parameters`: its thresholds (tau, p, gamma: what verify, evaluate and the report
        default to for it), rho's grid, the images of the logit check and where its concepts came from."""
        return {"tau": self.tau, "p": self.p, "gamma": self.gamma, "force": self.force,
                "data_dir": str(self.data_dir) if self.data_dir else None,
                "grid": list(RHO_GRID) if self.fixed_rho is None else None, "check_images": check_images,
                "from_screen": from_screen}


@dataclass(frozen=True)
class RunSettings:
    """The settings every channel of one disentanglement shares, as given (`disentangle` documents each);
    checked together, before anything runs, when a run starts."""

    rho: float | str = "auto"
    objective: str = "abs"
    data_dir: str | os.PathLike | None = None
    force: bool = False
    device: str = "auto"
    batch_size: int = 64
    progress: bool = True
    tau: float = TAU
    p: float = P
    gamma: float = GAMMA  # Theorem 3.1's cosine threshold: the screening's, for runs taken from it


def _options(settings: RunSettings) -> _Options:
    """The settings every channel of a run shares, each checked (README "Arguments") before anything runs."""
    rho, objective, data_dir = settings.rho, settings.objective, settings.data_dir
    check_text("objective", objective)
    if objective not in OBJECTIVES:
        raise RunError(f"unknown `objective` '{objective}'; use abs (paper) or positive (reference code)")
    fixed_rho = None
    if isinstance(rho, str):
        if rho != "auto":
            raise ArgumentError(f"`rho` must be \"auto\" or a number in (0, 1] (int or float), got str {rho!r}")
    else:
        fixed_rho = check_real("rho", rho, 0, 1, low_open=True, hint="; or \"auto\" for Eq. 6 over the grid")
    batch_size = check_int("batch_size", settings.batch_size, 1, BATCH_MAX)
    tau, p, gamma = check_thresholds(settings.tau, settings.p, settings.gamma)
    check_path("data_dir", data_dir, none=True)
    check_bool("force", settings.force)
    check_bool("progress", settings.progress)
    check_text("device", settings.device)
    if data_dir is not None:
        check_data_dir(data_dir)  # named as missing now, not as a missing image once the model has run
    return _Options(fixed_rho, objective, settings.force, data_dir, batch_size, settings.progress, tau, p, gamma)


def _validate(store: Store, request: ChannelRequest, out_channels: int, options: _Options) -> _Plan:
    force, tau, p = options.force, options.tau, options.p
    if not 0 <= request.channel < out_channels:
        raise RunError(f"channel {request.channel} is out of range; the layer has channels 0..{out_channels - 1}")
    concepts = [resolve_classes(store, concept) for concept in request.concepts]
    if len(concepts) < 2 or not all(concepts):
        raise RunError("give at least two concepts of at least one class each: `concept1` and `concept2`, "
                       "or `concepts` with one list of classes per concept")
    everything = [c for concept in concepts for c in concept]
    twice = sorted({c for c in everything if everything.count(c) > 1})
    if twice:
        raise RunError(f"class {twice[0]} is in two concepts; a class belongs to one concept")
    require_counted_once(store, SCREEN_SPLIT)
    counts = {r["target"]: r["n"] for r in store.reads.class_sizes(split=SCREEN_SPLIT).to_pylist()}
    for class_id in everything:
        if not counts.get(class_id):
            raise RunError(f"class {class_id} has no {SCREEN_SPLIT} images in the store; ingest them first "
                           f"(polysem ingest DATA_DIR --split {SCREEN_SPLIT})")
    # filtering on the classes lets DuckDB read only their images
    relevant = set(store.reads.relevant_classes_among(
        tau=tau, p=p, split=SCREEN_SPLIT, channel=request.channel, classes=everything).column("class_id").to_pylist())
    missing = [c for c in everything if c not in relevant]
    if missing:
        message = (f"channel {request.channel} is not relevant (tau {tau}, p {p}) for class "
                   f"{', '.join(map(str, missing))}")
        if not force:
            raise RunError(message + "; lower `tau` or `p` if the screening should count it as relevant, or "
                           "pass `force` to disentangle it anyway")
        warnings.warn(message, RelevanceWarning, stacklevel=4)
    return _Plan(request.channel, concepts)


def _check_channels(store: Store, requests: list[ChannelRequest]) -> int:
    """The layer's number of output channels, once each request names a channel of its own."""
    for request in requests:
        if not isinstance(request, ChannelRequest):
            raise RunError(f"a request must be a ChannelRequest(channel, concepts), got {request!r}")
        request.channel = check_int("channel", request.channel, 0, COUNT_MAX)
        request.concepts = check_class_lists("concepts", request.concepts)
    channels = [r.channel for r in requests]
    if len(set(channels)) != len(channels):
        raise RunError("a channel can be disentangled once per model; give each channel one request")
    return store.reads.out_channels()


def requests_from_screen(store: Store, *, limit: int | None = None, tau: float = TAU, p: float = P,
                         gamma: float = GAMMA) -> list[ChannelRequest]:
    """`--from-screen`: the polysemantic channels, lowest between-concept cosine first (at most `limit`), each
    with all its concepts (`polysem screen --concepts`; recorded in `channel_concepts`)."""
    limit = check_int("limit", limit, 1, COUNT_MAX, none=True, hint="; omit it for every channel")
    rows = channel_concepts(store, tau=tau, p=p, gamma=gamma, limit=limit).to_pylist()
    if not rows:
        raise RunError(f"the screening (tau {tau}, p {p}, gamma {gamma}) finds no channel with two or more concepts "
                       "to disentangle; try a larger `gamma` or a smaller `p`")
    return [ChannelRequest(row["channel"], row["concepts"]) for row in rows]


def _concept_arv(store: Store, channel: int, classes: list[int]) -> np.ndarray:
    return np.array(store.reads.concept_arv_of(channel=channel, classes=classes, split=SCREEN_SPLIT), dtype=np.float64)


@dataclass
class _Base:
    """The store's model on the run's device, its layer of interest and transform, and the positions the
    store counts (`polysem.ingest.units`; a conv's are all)."""

    model: nn.Module
    layer_name: str
    layer: UnitLayer
    transform: Callable
    device: torch.device
    positions: str

    @classmethod
    def load(cls, store: Store, device: str) -> _Base:
        model, layer_name, layer, transform = base_model(store)
        run_device = resolve_device(device)
        model.to(run_device)
        return cls(model, layer_name, layer, transform, run_device, layer_positions(store.meta()["layer_shape"]))


class _NoSplit(RunError):
    """No rho of the grid leaves every concept an l-1 channel of its own."""


def _split(store: Store, base: _Base, plan: _Plan, options: _Options) -> None:
    """The plan's ARVs, rho, scores and source split; warnings for concepts left with their bias alone."""
    plan.arvs = [_concept_arv(store, plan.channel, concept) for concept in plan.concepts]
    if options.fixed_rho is None:
        _split_auto(store, base, plan, options)
    else:
        _split_fixed(plan, options.fixed_rho, options.force, base.layer)
    assert plan.split is not None  # set by _split_auto or _split_fixed
    weight = base.layer.weight.detach().cpu()
    for j in bias_only_concepts(weight[plan.channel], plan.split):
        if j not in plan.split.empty_concepts:
            plan.warnings.append(f"c'{j} of channel {plan.channel} gets zero weight from its own sources: "
                                 "it carries only the shared inputs and its bias")


def _split_auto(store: Store, base: _Base, plan: _Plan, options: _Options) -> None:
    """rho by Eq. 6 over the grid, on the concepts' feature maps; `_NoSplit` when no rho splits."""
    assert plan.arvs is not None  # set by _split
    run = ModelPass(base.device, options.batch_size, options.progress)
    maps = [np.concatenate([cached_class_maps(store, base.model, base.layer_name, layer=base.layer,
                                              transform=base.transform, class_id=c, split=SCREEN_SPLIT, run=run,
                                              data_dir=options.data_dir)
                            for c in concept])
            for concept in plan.concepts]
    plan.scores = rho_scores(maps, base.layer, plan.channel, plan.arvs, options.objective, positions=base.positions)
    try:
        plan.rho = best_rho(plan.scores)
    except RunError as error:
        raise _NoSplit(str(error)) from None
    plan.split = split_sources(plan.arvs, plan.rho, positive_only(base.layer))


def _split_fixed(plan: _Plan, rho: float, force: bool, layer: UnitLayer) -> None:
    assert plan.arvs is not None  # set by _split
    plan.rho = rho
    plan.split = split_sources(plan.arvs, rho, positive_only(layer))
    plan.scores = [{"rho": rho, "objective_value": None, "separated": None,
                    "n_sources": [len(own) for own in plan.split.sources], "skipped": None}]
    if plan.split.empty_concepts:
        message = (f"at rho {rho} concept {', '.join(map(str, plan.split.empty_concepts))} of channel "
                   f"{plan.channel} has no l-1 channel of its own, so its new channel equals the residual")
        if not force:
            raise RunError(message + "; choose another `rho` (or `rho`=auto), or pass `force`")
        plan.warnings.append(message)


def _build_check_record(store: Store, base: _Base, plans: list[_Plan], options: _Options,
                        from_screen: bool = False) -> list[Run]:
    """One model with every plan's channel disentangled, checked against the original, saved and recorded."""
    # from a CPU copy: moving `layer` itself would move it out of the model still used on the device
    new_layer = disentangled_layer(copy.deepcopy(base.layer).cpu(), [p.channel for p in plans],
                                   cast("list[SourceSplit]", [p.split for p in plans]))  # `_split` set every plan's split
    disentangled = copy.deepcopy(base.model).cpu()
    replace_module(disentangled, base.layer_name, new_layer)
    max_diff, n_checked = check_equivalence(store, base.model, disentangled, plans, base.transform, base.device,
                                            options.data_dir, options.batch_size)
    return _record(store, plans, new_layer, base.layer_name, options.objective, max_diff, n_checked,
                   options.parameters(n_checked, from_screen))


def disentangle(store: Store | str | os.PathLike, channel: int, *, concept1: list | None = None,
                concept2: list | None = None, concepts: list[list] | None = None, rho: float | str = "auto",
                objective: str = "abs", data_dir: str | os.PathLike | None = None, force: bool = False,
                device: str = "auto", batch_size: int = 64, progress: bool = True, tau: float = TAU,
                p: float = P) -> Run:
    """Disentangle one channel into concept1 and concept2, or into k >= 2 `concepts`; returns the recorded run.

    The layer's channel c becomes k concept channels c'_1..c'_k and a residual r, merged back so that the
    model's outputs stay the same (checked on stored images); the run is recorded in `runs`, the model in
    the store's artifacts.

    Args:
        store: the store, or its folder.
        channel: the channel of the layer of interest to split, 0 .. C_l - 1.
        concept1, concept2: the two concepts, each a list of class ids, folder names or class names.
        concepts: instead of concept1 and concept2, k >= 2 concepts.
        rho: "auto" (Eq. 6 over the grid 0.05..1.00) or the source threshold in (0, 1].
        objective: "abs" (the paper's Eq. 6) or "positive" (max(., 0) + 1e-5, the reference code).
        data_dir: the folder that holds the images now, if they moved since ingest.
        force: proceed when the channel is not relevant for a concept's class (tau, p), or a fixed rho
            leaves a concept without sources (its c'_j then equals r).
        device: "auto", "cpu" or "cuda".
        batch_size: images per forward pass (feature maps and the logit check).
        progress: show progress bars.
        tau, p: Ineq. 2's relevance threshold (relative to the positive attribution sum) and fraction of a
            class's images, as the screening uses them.

    Returns:
        The recorded `Run` (its `sources`: per concept the l-1 channel indices of its own).

    Example:
        >>> run = polysem.disentangle(store, 1660, concept1=["tabby"], concept2=[938])
        >>> run.run_id, run.concepts, run.max_logit_diff < 1e-4
        ('3f2a9c01bd', [[281], [938]], True)
    """
    channel = check_int("channel", channel, 0, COUNT_MAX)
    concept1 = check_class_list("concept1", concept1, names=True, none=True)
    concept2 = check_class_list("concept2", concept2, names=True, none=True)
    if concepts is None:
        concepts = [concept1 or [], concept2 or []]
    elif concept1 is not None or concept2 is not None:
        raise RunError("give concept1 and concept2, or concepts, not both")
    else:
        concepts = check_class_lists("concepts", concepts)
    request = ChannelRequest(channel, concepts)
    return disentangle_channels(store, [request], rho=rho, objective=objective, data_dir=data_dir, force=force,
                                device=device, batch_size=batch_size, progress=progress, tau=tau, p=p)[0]


def disentangle_channels(store: Store | str | os.PathLike, requests: list[ChannelRequest], *,
                         rho: float | str = "auto", objective: str = "abs",
                         data_dir: str | os.PathLike | None = None, force: bool = False, device: str = "auto",
                         batch_size: int = 64, progress: bool = True, tau: float = TAU, p: float = P,
                         gamma: float = GAMMA) -> list[Run]:
    """Disentangle the named channels into one model, check it, save it and record one run per channel.

    Every request is checked before the model loads, and a channel no rho splits is refused.
    """
    store = as_store(store)
    store.require()
    pending_records(store.path)  # a forged pending record is refused before any work, not after it
    options = _options(RunSettings(rho, objective, data_dir, force, device, batch_size, progress, tau, p, gamma))
    out_channels = _check_channels(store, requests)
    plans = [_validate(store, request, out_channels, options) for request in requests]
    base = _Base.load(store, device)
    for plan in plans:
        _split(store, base, plan, options)
    return _build_check_record(store, base, plans, options)


def check_candidate_options(take: int, settings: RunSettings) -> _Options:
    """The checks of `disentangle_candidates`' settings, for a caller to run before it screens for candidates
    (which records `channel_concepts`): a bad setting then changes nothing."""
    options = _options(settings)
    check_int("take", take, 1, COUNT_MAX)
    return options


def disentangle_candidates(store: Store | str | os.PathLike, candidates: list[ChannelRequest], *, take: int = 1,
                           rho: float | str = "auto", objective: str = "abs",
                           data_dir: str | os.PathLike | None = None, force: bool = False, device: str = "auto",
                           batch_size: int = 64, progress: bool = True, tau: float = TAU,
                           p: float = P, gamma: float = GAMMA, again: bool = False) -> list[Run]:
    """`--from-screen`: candidates in order of preference; the first `take` that split are disentangled into
    one model, checked, saved and recorded, and a candidate no rho splits is passed over with a warning.

    A candidate is checked when its turn comes, after the model loads. When an identical run exists (the
    same first `take` candidates with the same settings, from the screening) its runs are returned, with a
    warning, unless `again`.
    """
    store = as_store(store)
    store.require()
    pending_records(store.path)  # a forged pending record is refused before any work, not after it
    options = check_candidate_options(take, RunSettings(rho, objective, data_dir, force, device, batch_size, progress,
                                                        tau, p, gamma))
    again = check_bool("again", again)
    if not again:
        existing = identical_screen_run(store, candidates[:take], options)
        if existing:
            warnings.warn(f"an identical run exists: {existing[0].group_id} (the same channels, concepts and "
                          "settings from the screening); it is returned as it is: pass `again` to run it again",
                          RelevanceWarning, stacklevel=2)
            return existing
    out_channels = _check_channels(store, candidates)
    base = _Base.load(store, device)
    plans: list[_Plan] = []
    for candidate in candidates:
        if len(plans) == take:
            break
        plan = _validate(store, candidate, out_channels, options)
        try:
            _split(store, base, plan, options)
        except _NoSplit as error:
            warnings.warn(f"channel {plan.channel} passed over: {error}", RelevanceWarning, stacklevel=2)
            continue
        plans.append(plan)
    if not plans:
        raise RunError("no candidate channel splits at any rho of the grid (each leaves a concept without an l-1 "
                       "channel of its own); try a smaller `gamma` or name channels and concepts yourself")
    return _build_check_record(store, base, plans, options, from_screen=True)


def disentangle_runs(store: Store | str | os.PathLike, *, channel: int | None = None, concept1: list | None = None,
                     concept2: list | None = None, concepts: list[list] | None = None, from_screen: bool = False,
                     take: int = 1, gamma: float = GAMMA, again: bool = False,
                     settings: RunSettings = RunSettings()) -> list[Run]:
    """What `polysem disentangle` does, as one call: the named channel into its concepts (`disentangle_channels`),
    or, with `from_screen`, the first `take` candidates of the screening at (`settings.tau`, `settings.p`,
    `gamma`) that split, into one model (`disentangle_candidates`; an identical earlier run is returned unless
    `again`). The combinations that mean nothing are refused before anything runs or is recorded.

    Args:
        store: the store, or its folder.
        channel: the channel to split (named runs only).
        concept1, concept2: two concepts, each a list of class ids or names; or `concepts`, k >= 2 of them.
        from_screen: take the channels and concepts from the screening instead (`polysem screen --concepts`).
        take: with `from_screen`, how many channels go into the one model.
        gamma: with `from_screen`, the complete-linkage threshold that groups classes into concepts.
        again: with `from_screen`, run again even when an identical run exists.
        settings: rho, objective, data_dir, force, device, batch_size, progress, tau and p (`disentangle`).

    Returns:
        The recorded runs, one per channel of the model, in channel order of the request.

    Example:
        >>> runs = disentangle_runs(store, from_screen=True, take=2)
        >>> [(run.channel, run.concepts) for run in runs]
        [(1660, [[530], [938]]), (522, [[12, 13], [401]])]
    """
    store = as_store(store)
    from_screen = check_bool("from_screen", from_screen)
    if from_screen:
        check_candidate_options(take, settings)  # before the screening records anything
        if channel is not None or concept1 or concept2 or concepts:
            raise RunError("`from_screen` picks channels and concepts itself; drop `channel` and the concepts")
        candidates = requests_from_screen(store, tau=settings.tau, p=settings.p, gamma=gamma)
        return disentangle_candidates(store, candidates, take=take, again=again,
                                      **_flat(replace(settings, gamma=gamma)))
    if again:
        raise RunError("`again` is for `from_screen`, which looks for an identical run; a run of named channels is "
                       "always made anew")
    if take != 1 or gamma != GAMMA:
        raise RunError("`take` and `gamma` choose channels for `from_screen`; drop them when you name `channel` and "
                       "its concepts")
    if concepts and (concept1 or concept2):
        raise RunError("give `concepts` once per concept, or `concept1` and `concept2`, not both")
    named = concepts if concepts else [concept1 or [], concept2 or []]
    if channel is None or len(named) < 2 or not all(named):
        raise RunError("give `channel` and two or more concepts (`concept1` and `concept2`, or `concepts` with one "
                       "list of classes per concept), or `from_screen`")
    return disentangle_channels(store, [ChannelRequest(channel, named)], **_flat(settings))


def _flat(settings: RunSettings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def identical_screen_run(store: Store, candidates: list[ChannelRequest], options: _Options) -> list[Run]:
    """The runs of a recorded `--from-screen` group with exactly these candidates (channels and concepts, in
    order) and these settings; [] when there is none."""
    wanted = [(c.channel, [sorted(concept) for concept in c.concepts]) for c in candidates]
    settings = {"tau": options.tau, "p": options.p, "gamma": options.gamma, "force": options.force,
                "grid": list(RHO_GRID) if options.fixed_rho is None else None, "from_screen": True}
    groups: dict[str, list[Run]] = {}
    for row in store.reads.run_list().to_pylist():
        run = Run.from_row(row)
        groups.setdefault(run.group_id, []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: r.run_id)
        recorded = {"gamma": GAMMA, **runs[0].parameters}  # a run recorded without gamma was made at the paper's
        same_settings = all(recorded.get(k) == v for k, v in settings.items())
        same_rho = runs[0].objective == options.objective and (
            options.fixed_rho is None or all(r.rho == options.fixed_rho for r in runs))
        if same_settings and same_rho and [(r.channel, [sorted(c) for c in r.concepts]) for r in runs] == wanted:
            return runs
    return []


def check_equivalence(store: Store, model: nn.Module, disentangled: nn.Module, plans, transform, device,
                      data_dir=None, batch_size: int = 64) -> tuple[float, int]:
    """Max |logits_new - logits_old| on up to 32 stored images (concept images first); refuses a bad model."""
    classes = sorted({c for p in plans for concept in p.concepts for c in concept})
    rows = store.reads.check_images(split=SCREEN_SPLIT, classes=classes, limit=CHECK_IMAGES).to_pylist()
    rows = remap_paths(store, rows, SCREEN_SPLIT, data_dir)
    records = [ImageRecord(r["image_id"], r["path"], r["target"]) for r in rows]
    images_of = record_images(records, transform)
    items = [images_of[i] for i in range(len(records))]
    groups, failures = collate(items)
    if failures:
        raise RunError(f"cannot read {records[failures[0][0]].path}: {failures[0][1]}")
    disentangled.to(device)
    old, new = [], []
    with torch.no_grad(), exact_math():
        for _, images in groups:  # one group per image size
            for i in range(0, len(images), batch_size):
                old.append(model(images[i : i + batch_size].to(device)))
                new.append(disentangled(images[i : i + batch_size].to(device)))
    disentangled.cpu()
    n_checked = sum(len(images) for _, images in groups)
    old_logits, new_logits = torch.cat(old), torch.cat(new)
    max_diff = float((new_logits - old_logits).abs().max())
    limit = LOGIT_TOLERANCE * max(1.0, float(old_logits.abs().max()))
    if not max_diff <= limit:
        raise RunError(f"the disentangled model changes the logits by {max_diff:.3g} (> {limit:.3g}); nothing recorded")
    return max_diff, n_checked


def _record(store: Store, plans, new_layer: DisentangledLayer, layer_name: str, objective: str, max_diff: float,
            n_checked: int, parameters: dict) -> list[Run]:
    """Write the artifact, keep its rows pending beside it, then record them.

    The finished model is never thrown away: if the catalog stays busy, the rows wait in
    `artifacts/<group>.pt.pending.json` and the next command that writes to the store
    records them (`Store.connect(write=True)`).
    """
    group_id = uuid.uuid4().hex[:10]
    artifact = Path("artifacts") / f"{group_id}.pt"
    # an open file, not its name: torch.save reports a failure to open or write a name as RuntimeError, which
    # atomic_path could not tell a full disk or a refused write by
    with atomic.atomic_path(store.path / artifact) as tmp, open(tmp, "wb") as handle:
        torch.save({"layer": layer_name, "kind": _layer_kind(new_layer.expanded), "channels": new_layer.channels,
                    "units": new_layer.units, "state_dict": new_layer.state_dict()}, handle)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    runs, scores = [], []
    for j, plan in enumerate(plans):
        run_id = group_id if len(plans) == 1 else f"{group_id}-{j}"
        runs.append({
            "run_id": run_id, "group_id": group_id, "created_at": now, "channel": plan.channel,
            "concepts": plan.concepts, "rho": plan.rho, "objective": objective,
            "sources": [list(own) for own in plan.split.sources], "shared": list(plan.split.shared),
            "max_logit_diff": max_diff, "artifact": str(artifact), "polysem_version": __version__,
            "parameters": parameters, "warnings": plan.warnings, "layer": layer_name,
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
    return [Run.from_row(run) for run in runs]


def _layer_kind(layer: nn.Module) -> str:
    """What an artifact records as its layer's kind ("kind"); an artifact without it holds a conv."""
    return "linear" if is_linear(layer) else "conv"


def layer_from_artifact(layer: UnitLayer, saved: dict, splits: dict[int, SourceSplit], run_id: str) -> DisentangledLayer:
    """The disentangled layer an artifact holds, rebuilt on the store's layer with the group's source splits."""
    kind, names = saved.get("kind", "conv"), {"conv": "Conv2d", "linear": "Linear"}
    if kind != _layer_kind(layer):
        raise RunError(f"the model of run {run_id} holds a split {names.get(kind, kind)}, but the store's layer is a "
                       f"{names[_layer_kind(layer)]}; disentangle the channel again (`polysem runs RUN_ID` shows its "
                       "settings)")
    new_layer = disentangled_layer(layer, saved["channels"], [splits[c] for c in saved["channels"]])
    new_layer.load_state_dict(saved["state_dict"])
    return new_layer


def run_row(store: Store, run_id: str) -> Run:
    row = store.reads.run_by_id(run_id=run_id)
    if row is None:
        raise RunError(f"unknown run id '{run_id}'; `polysem runs` lists them")
    return Run.from_row(row)


def run_on_its_layer(store: Store, run_id: str) -> tuple[Store, Run]:
    """A run and the store working on the run's layer; a store told another layer is refused."""
    run = run_row(store, run_id)
    if run.layer is None:
        return store, run
    if store.layer is not None and store.layer != run.layer:
        raise RunError(f"run {run_id} split a channel of layer {run.layer}, not of {store.layer}; omit `layer` or "
                       f"give {run.layer}")
    return store.for_layer(run.layer), run


def load_model(store: Store | str | os.PathLike, run_id: str) -> nn.Module:
    """The disentangled model of a run (with every channel of its group), in eval mode.

    Needs only the store: the base model is rebuilt from the store's metadata and the
    disentangled layer is read from the run's artifact (a weights-only state_dict). A store made
    from a model object needs that object in this process (`polysem.use`); the model is a copy.
    """
    store = as_store(store)
    check_text("run_id", run_id)
    store, run = run_on_its_layer(store, run_id)
    model, layer_name, layer, _ = base_model(store)
    artifact = store.path / run.artifact
    try:
        saved = torch.load(artifact, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only loader met objects polysem never saves
        raise RunError(f"the model of run {run_id} in {artifact} is not a file polysem wrote: it holds objects "
                       "other than tensors, so it was not loaded; disentangle the channel again (`polysem runs "
                       "RUN_ID` shows its settings)") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:  # missing, truncated, not a torch file
        raise RunError(f"the model of run {run_id} in {artifact} cannot be read ({type(error).__name__}); "
                       "disentangle the channel again (`polysem runs RUN_ID` shows its settings)") from None
    group = store.reads.runs_of_group(group_id=run.group_id).to_pylist()
    splits = {r["channel"]: SourceSplit(tuple(tuple(own) for own in r["sources"]), tuple(r["shared"])) for r in group}
    replace_module(model, layer_name, layer_from_artifact(layer, saved, splits, run_id))
    return model.eval()
