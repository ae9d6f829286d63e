"""Resolving what the user names into objects: the model, its weights, the layer, the transform.

Each resolved thing carries a string `spec` that the store records, so a later
ingest can be checked against it and a later session can rebuild the same model.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import torch
import torchvision
from torch import nn
from torchvision import transforms

from polysem.errors import ModelError
from polysem.ingest.identity import ResolvedModel, state_dict_sha256
from polysem.ingest.units import DEFAULT_POSITIONS
from polysem.util.checks import check_int, check_text
from polysem.util.hooks import hooked
from polysem.util.imports import code_folder, import_from_folder, importable_from

if TYPE_CHECKING:
    from polysem.ingest.objects import DatasetSource

__all__ = ["CROP_SIZE", "DEFAULT_TRANSFORM", "IMAGENET_MEAN", "IMAGENET_STD", "OFFLINE_ENV", "RESIZE_SIZE", "ResolvedModel", "ResolvedTransform",
           "imagenet_transform", "imagenet_weights", "layer_shape", "model_layers", "resolve_device", "resolve_layer", "resolve_model", "resolve_transform", "state_dict_sha256", "stored_code", "stored_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_SIZE, CROP_SIZE = 256, 224  # the default transform: shorter side to 256, centre crop 224 x 224
DEFAULT_TRANSFORM = "imagenet"  # resize 256, center crop 224, ImageNet normalisation
OFFLINE_ENV = "POLYSEM_OFFLINE"


@dataclass
class ResolvedTransform:
    fn: Callable | DatasetSource  # a DatasetSource for a store made from Datasets (ingest/objects.py)
    spec: str
    import_root: str | None = None


def resolve_model(model_spec: str, weights_spec: str | None, import_root: str | None = None,
                  store_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """Build the model in eval mode with frozen parameters.

    model_spec: a torchvision classification model name (`resnet50`) or
    `package.module:callable` returning an `nn.Module`.
    weights_spec: `imagenet`, `random` / `random:SEED`, a state_dict path, or
    None (torchvision: imagenet; callable: its own weights).
    import_root: the folder a store's code was cleared to come from (`stored_code`); None for code the
    user names (imported from the current folder and PYTHONPATH). Nothing inside `store_dir` is imported.
    """
    root = None
    if ":" in model_spec:
        factory, root = _load_callable(model_spec, "model", import_root, store_dir)
        try:
            with importable_from(root, outside=store_dir):  # the factory may import more of its package
                model = factory()
        except (Exception, SystemExit) as error:  # a user's callable may even call sys.exit
            raise ModelError(f"model callable {model_spec} failed: {type(error).__name__}: {error}; "
                             "fix it so that it returns an nn.Module") from error
        if not isinstance(model, nn.Module):
            raise ModelError(f"{model_spec} returned {type(model).__name__}, not a torch.nn.Module")
        weights_spec = weights_spec or "own"
        if weights_spec.startswith("random"):
            raise ModelError("`weights`=random is for torchvision models; a callable model builds its own weights")
        if weights_spec not in ("own", "imagenet"):
            _load_state_dict_file(model, weights_spec, model_spec)
        elif weights_spec == "imagenet":
            raise ModelError("`weights`=imagenet is for torchvision models; pass a state_dict path for a callable model")
    else:
        model, weights_spec = _torchvision_model(model_spec, weights_spec or "imagenet")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return ResolvedModel(model, model_spec, _normalise_weights_spec(weights_spec), state_dict_sha256(model), root)


def _normalise_weights_spec(spec: str) -> str:
    if spec in ("own", "imagenet") or spec.startswith("random"):
        return spec
    return str(Path(spec).expanduser().absolute())


def _torchvision_model(name: str, weights_spec: str) -> tuple[nn.Module, str]:
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(
            f"unknown model '{name}'{hint}; give a torchvision classification model name or package.module:callable"
        )
    if weights_spec.startswith("random"):
        seed = _random_seed(weights_spec)
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global RNG
            torch.manual_seed(seed)
            return torchvision.models.get_model(name, weights=None), f"random:{seed}"
    model = torchvision.models.get_model(name, weights=None)
    if weights_spec == "imagenet":
        model.load_state_dict(_imagenet_state_dict(name))
        return model, "imagenet"
    _load_state_dict_file(model, weights_spec, name)
    return model, weights_spec


def _random_seed(spec: str) -> int:
    _, _, seed = spec.partition(":")
    try:
        return int(seed or 0)
    except ValueError:
        raise ModelError(f"bad `weights` '{spec}': use random or random:SEED with an integer seed") from None


def imagenet_weights(name: str):
    """The torchvision weights enum member polysem uses for `--weights imagenet`.

    ResNet-50 gets IMAGENET1K_V1, the weights of the paper (what `pretrained=True` loaded).
    """
    enum = torchvision.models.get_model_weights(name)
    return getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT


def _imagenet_state_dict(name: str) -> dict:
    weights = imagenet_weights(name)
    filename = os.path.basename(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        if os.environ.get(OFFLINE_ENV):
            raise ModelError(
                f"ImageNet weights for {name} are not in the torch cache: place {filename} "
                f"(from {weights.url}) at {cached}, or pass `weights`=PATH"
            )
        try:
            return weights.get_state_dict(progress=True)
        except Exception as error:  # any network failure means the same thing to the user
            raise ModelError(
                f"could not download {weights.url} ({type(error).__name__}); place {filename} at {cached} "
                "or pass `weights`=PATH"
            ) from error
    return torch.load(cached, map_location="cpu", weights_only=True)


def _load_state_dict_file(model: nn.Module, path: str, model_spec: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is not a regular file" if file.exists() else "not found"
        raise ModelError(f"weights file {file} {what}; pass an existing state_dict path")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot read weights file {file}: {type(error).__name__}; save it with torch.save(model.state_dict())") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {file} holds a {type(state).__name__}, not a state_dict")
    expected, given = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise ModelError(f"weights file {file} does not match model {model_spec}: {'; '.join(parts)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise ModelError(f"weights file {file} does not match model {model_spec}: {detail}") from error


def _few(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def resolve_device(spec: str) -> torch.device:
    """`auto`: CUDA when present; `cuda`: this process's GPU (LOCAL_RANK under torchrun); `cpu`; `cuda:N`."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError("`device`=cuda was asked for but no CUDA device is available; use `device`=cpu")
        if spec == "cuda":
            index = int(os.environ.get("LOCAL_RANK", "0"))
            if index >= torch.cuda.device_count():
                raise ModelError(f"this is local rank {index} but only {torch.cuda.device_count()} CUDA device(s) are "
                                 "visible; start at most that many processes per node (torchrun --nproc-per-node)")
            return torch.device("cuda", index)
    elif spec != "cpu":
        raise ModelError(f"unknown `device` '{spec}'; use auto, cpu or cuda")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ModelError(f"unknown `device` '{spec}'; use auto, cpu or cuda") from None


def resolve_layer(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    """The layer of interest by dotted name: a Conv2d, or a Linear applied per token or position (`ingest.units`);
    clear errors for anything else."""
    modules = dict(model.named_modules())
    takeable = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if name not in modules:
        close = difflib.get_close_matches(name, takeable, n=5, cutoff=0.3)
        hint = f"; closest conv and Linear layers: {', '.join(close)}" if close else ""
        raise ModelError(f"layer '{name}' not found in the model{hint} (`polysem layers` lists them all)")
    layer = modules[name]
    if isinstance(layer, nn.Linear):
        return layer
    if not isinstance(layer, nn.Conv2d):
        raise ModelError(f"layer '{name}' is a {type(layer).__name__}, neither a Conv2d nor a Linear; choose one of "
                         "those (`polysem layers` lists them)")
    if layer.groups != 1:
        raise ModelError(f"layer '{name}' is a grouped conv (groups={layer.groups}); only groups=1 is supported")
    if layer.padding_mode != "zeros":
        raise ModelError(f"layer '{name}' pads with '{layer.padding_mode}'; only zero padding is supported")
    return layer


def model_layers(model_spec: str, weights_spec: str | None = None, *, size: int = 224, channels: int = 3) -> pa.Table:
    """The conv and Linear layers of a model, for choosing `layer`: one row each in the model's order with its
    name, type, weight shape (conv: out x in x kH x kW, Linear: out x in), stride (NULL for a Linear), and whether
    polysem can take it (and why not). A Linear is taken when the forward pass of one `channels` x `size` x `size`
    image applies it per token or position (input N x ... x D). When the model fails on that image its Linears
    are unchecked: `takes` is NULL and `why_not` names the model's error and the fix (its input's size and
    channels); `ingest` checks the layer on the data's first image either way.

    Args:
        model_spec: a torchvision classification model name or `package.module:callable`.
        weights_spec: as for `resolve_model`; default: random for a torchvision name (the structure needs no
            download), the callable's own weights otherwise.
        size: the side in pixels of the image run through the model (its input size).
        channels: the channels of that image (1 for a grayscale model).

    Returns:
        A table: layer (str), type (str), weight_shape (list of int), stride (list of int), takes (bool; NULL:
        unchecked), why_not (str, NULL when polysem takes it).

    Example:
        >>> model_layers("resnet18").filter(pc.field("takes")).column("layer")[-1]
        'layer4.1.conv2'
    """
    check_text("model_spec", model_spec)
    check_text("weights_spec", weights_spec, none=True)
    size = check_int("size", size, 1, 4096, hint=" pixels (the model's input side)")
    channels = check_int("channels", channels, 1, 64, hint=" (the model's input channels)")
    if weights_spec is None and ":" not in model_spec:
        weights_spec = "random"
    model = resolve_model(model_spec, weights_spec).model
    linear_inputs, failure = _linear_input_shapes(model, size, channels)
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        takes: bool | None = True
        try:
            resolve_layer(model, name)
            why_not = None
            if isinstance(module, nn.Linear) and failure is not None:
                takes, why_not = None, (f"unchecked: the model did not run on one {channels} x {size} x {size} image "
                                        f"({failure}); give its input's `size` and `channels`")
            elif name in linear_inputs:
                why_not = linear_position_problem(name, linear_inputs[name])
            elif isinstance(module, nn.Linear) and linear_inputs:  # the forward pass ran but never called it
                why_not = (f"layer '{name}' never runs as a module in the forward pass (another module uses its "
                           "weights, as nn.MultiheadAttention does its out_proj)")
        except ModelError as error:
            why_not = str(error).split("; ")[0]
        stride = list(module.stride) if isinstance(module, nn.Conv2d) else None
        rows.append({"layer": name, "type": type(module).__name__, "weight_shape": list(module.weight.shape),
                     "stride": stride, "takes": takes and why_not is None, "why_not": why_not})
    if not rows:
        raise ModelError(f"the model {model_spec} has no Conv2d or Linear layer; polysem takes one of those (`layer`)")
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("layer", pa.string()), ("type", pa.string()), ("weight_shape", pa.list_(pa.int64())),
        ("stride", pa.list_(pa.int64())), ("takes", pa.bool_()), ("why_not", pa.string())]))


def linear_position_problem(name: str, input_shape: tuple[int, ...], batch: int = 1) -> str | None:
    """Why a Linear whose input (for `batch` images) has this shape is not a layer of units over positions, or
    None when it is: polysem needs the batch on dim 0 and at least one position axis before the features."""
    if len(input_shape) < 3:
        return (f"layer '{name}' is a Linear applied to the whole image's features (input "
                f"{' x '.join(map(str, input_shape))}), with no token or position axis")
    if input_shape[0] != batch:
        return (f"layer '{name}' is a Linear whose input ({' x '.join(map(str, input_shape))} for {batch} image(s)) "
                "does not have the batch on dim 0: the model runs sequence-first; wrap it so that the layer sees "
                "batch x ... x features")
    return None


def _linear_input_shapes(model: nn.Module, size: int, channels: int = 3
                         ) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """(the input shape of every Linear the forward pass of one `channels` x `size` x `size` image runs through,
    None); ({}, the model's error in one line) when the model does not take such an image."""
    shapes: dict[str, tuple[int, ...]] = {}
    linears = {module: name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if not linears:
        return shapes, None

    def hook(module, inputs, output):
        shapes.setdefault(linears[module], tuple(inputs[0].shape))

    try:
        with torch.no_grad(), ExitStack() as hooks:
            for module in linears:
                hooks.enter_context(hooked(module, hook))
            model(torch.zeros(1, channels, size, size))
    except Exception as error:  # noqa: BLE001  a model of other inputs fails in its own way: named, no verdict
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return {}, f"{type(error).__name__}: {first[:160]}"
    return shapes, None


def layer_shape(layer: nn.Conv2d | nn.Linear, positions: str = DEFAULT_POSITIONS) -> dict:
    """The layer's shape as the store records it. A Linear is a 1x1 conv over its positions (window 1) with
    `kind` linear and the `positions` that count."""
    if isinstance(layer, nn.Linear):
        return {"kind": "linear", "out_channels": layer.out_features, "in_channels": layer.in_features,
                "kernel_size": [1, 1], "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1],
                "bias": layer.bias is not None, "positions": positions}
    return {
        "out_channels": layer.out_channels,
        "in_channels": layer.in_channels,
        "kernel_size": list(layer.kernel_size),
        "stride": list(layer.stride),
        "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
        "dilation": list(layer.dilation),
        "bias": layer.bias is not None,
    }


def resolve_transform(spec: str | None, import_root: str | None = None,
                      store_dir: str | os.PathLike | None = None) -> ResolvedTransform:
    """The image transform and its recorded spec (`imagenet` or `module:name`); `import_root` and
    `store_dir` as for `resolve_model`."""
    if spec is None or spec == DEFAULT_TRANSFORM:
        return ResolvedTransform(imagenet_transform(), DEFAULT_TRANSFORM)
    fn, root = _load_callable(spec, "transform", import_root, store_dir)
    return ResolvedTransform(fn, spec, root)


def _cleared(store, meta: dict, what: str) -> str | None:
    return code_folder(meta[what], what, meta.get(f"{what}_import_root"), store.path,
                       getattr(store, "trust_code", None))


def stored_code(store, meta: dict | None = None) -> tuple[ResolvedModel, ResolvedTransform]:
    """The model (with its recorded weights) and the transform a store names. The folders of both are
    cleared (`polysem.util.imports.code_folder`) before either is imported: a store never runs code on
    its own say-so. A model object and Datasets (ingest/objects.py) are the ones this process gave the store."""
    from polysem.ingest.objects import DATASET_TRANSFORM, is_object_spec, registered_model, store_source

    meta = store.meta(any_layer=True) if meta is None else meta
    model_root, transform_root = _cleared(store, meta, "model"), _cleared(store, meta, "transform")
    resolved = registered_model(store, meta) if is_object_spec(meta["model"]) else \
        resolve_model(meta["model"], meta["weights"], model_root, store.path)
    if meta["transform"] == DATASET_TRANSFORM:
        return resolved, ResolvedTransform(store_source(store, meta), DATASET_TRANSFORM)
    return resolved, resolve_transform(meta["transform"], transform_root, store.path)


def stored_transform(store, meta: dict | None = None) -> ResolvedTransform:
    """The transform a store names, its folder cleared before it is imported (`stored_code`); for a store made
    from Datasets, a `DatasetSource` reading the Datasets this process gave it."""
    from polysem.ingest.objects import DATASET_TRANSFORM, store_source

    meta = store.meta(any_layer=True) if meta is None else meta
    if meta["transform"] == DATASET_TRANSFORM:
        return ResolvedTransform(store_source(store, meta), DATASET_TRANSFORM)
    return resolve_transform(meta["transform"], _cleared(store, meta, "transform"), store.path)


def imagenet_transform() -> Callable:
    """docs/method.md's preprocessing: resize 256, center crop 224, ImageNet mean/std."""
    return transforms.Compose(
        [
            transforms.Resize(RESIZE_SIZE),
            transforms.CenterCrop(CROP_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _import_root(module, module_name: str) -> str | None:
    """The sys.path folder from which `module_name` was imported (None for a module without a file)."""
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    if path.name == "__init__.py":
        path = path.parent
    return str(path.parents[len(module_name.split(".")) - 1])


def _inside(path: Path, folder: str | os.PathLike) -> bool:
    return path.resolve().is_relative_to(Path(folder).resolve())


def _load_callable(spec: str, what: str, import_root: str | None = None,
                   store_dir: str | os.PathLike | None = None):
    """(callable, import root) for `package.module:name`, imported from `import_root` (a store's folder,
    cleared by `code_folder`) or from the current folder and PYTHONPATH; never from inside `store_dir`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"bad {what} '{spec}': write it as package.module:name")
    if "/" in module_name or os.sep in module_name or (module_name.endswith(".py") and Path(module_name).is_file()):
        dotted = Path(module_name).name.removesuffix(".py")
        raise ModelError(f"bad {what} '{spec}': name a module as Python imports it, not a file path: "
                         f"{dotted}:{attr}, run from the folder that holds {dotted}.py or with that folder "
                         "in PYTHONPATH")
    folder: str | None = import_root or os.getcwd()
    if import_root is None and store_dir is not None and _inside(Path(os.getcwd()), store_dir):
        folder = None  # the current folder is inside the store: not a place to import code from
    try:
        with importable_from(folder, outside=store_dir):
            # a store's cleared folder: the module from that folder alone; the user's own code: as Python finds it
            module = import_from_folder(module_name, import_root) if import_root else \
                importlib.import_module(module_name)
    except (Exception, SystemExit) as error:
        where = f"from {import_root} (the folder of the store's code)" if import_root else \
            "run from the folder that holds it or add it to PYTHONPATH"
        raise ModelError(
            f"cannot import {module_name} for {what} '{spec}': {type(error).__name__}: {error}; {where}"
        ) from error
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ModelError(f"module {module_name} has no '{attr}' (from {what} '{spec}')") from None
    if not callable(target):
        raise ModelError(f"{what} '{spec}' is a {type(target).__name__}, not callable")
    root = import_root or _import_root(module, module_name)
    if store_dir is not None and root is not None and _inside(Path(root), store_dir):
        raise ModelError(f"{what} '{spec}' comes from {root}, inside the store {store_dir}; the store would "
                         "refuse to run it later: keep the code in a folder outside the store")
    return target, root
