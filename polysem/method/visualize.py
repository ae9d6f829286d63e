"""Feature visualisation of a channel and of its disentangled units, recorded in `visualizations`.

Activation maximisation of the spatially summed activation of each unit (a Linear's
summed over the positions the store counts): for a
run the original channel (what merge computes, c'1 + c'2 - r), c'1, c'2 and r,
one image per unit, all in one batch (one forward pass that stops at layer l and
one backward pass per step for every unit). Two parameterisations of the image:

    fourier  Olah et al. 2017 (Lucid): a Fourier spectrum scaled by 1/f, colours
             decorrelated with ImageNet's colour correlation, a sigmoid; random
             jitter, scale and rotation each step; Adam.
    maco     Fel et al. 2023 (MaCo): only the phase is optimised, the magnitude
             spectrum stays fixed; random crops each step; NAdam. The magnitude is
             the mean amplitude spectrum of the store's own train images after the
             model's transform, so nothing downloads and it fits the user's domain.

Every image is then scored on every unit: image i of unit u, activations of all
units on it. The selectivity of c'1's image is act(c'1) / act(c'2) on it, the
reverse for c'2's image; it is left empty when the denominator is not positive.
"""

from __future__ import annotations

import io
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polysem.constants import SCREEN_SPLIT
from polysem.errors import ArgumentError, RunError
from polysem.ingest.units import DEFAULT_POSITIONS, layer_positions, unit_maps
from polysem.method.disentangling import DisentangledLayer
from polysem.query.confine import recorded_path
from polysem.query.records import now, record_visualizations
from polysem.query.store import Store, as_store
from polysem.util import atomic
from polysem.util.checks import COUNT_MAX, check_bool, check_int, check_path, check_text
from polysem.util.hooks import forward_to
from polysem.util.readings import selectivity_reading
from polysem.util.results import Result

__all__ = ["ARTIFACTS", "COLOUR", "CPU", "MAX_SIZE", "MAX_STEPS", "METHODS", "RESTART_IMAGES", "SPECTRUM_IMAGES", "FourierImage", "MacoImage", "Target", "UnitImage", "Visualization", "amplitude_spectrum", "augment", "channel_target", "decorrelate", "input_display", "input_normalisation", "input_side", "latest_visualizations", "maco_phase", "optimise", "optimise_units", "png_bytes", "recorrelate", "resize_images", "resize_spectrum", "run_target", "store_images", "unit_activations", "visualize"]

METHODS = ("maco", "fourier")
SPECTRUM_IMAGES = 256
ARTIFACTS = Path("artifacts") / "visualizations"
CPU = torch.device("cpu")

# Lucid's square root of ImageNet's colour correlation (rows R, G, B), its columns scaled so that
# the largest has norm 1: the optimisation runs in decorrelated colours, which makes its steps even.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
COLOUR = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


def recorrelate(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W decorrelated colours -> RGB (other channel counts pass unchanged)."""
    if x.shape[1] != 3:
        return x
    return torch.einsum("ij,njhw->nihw", COLOUR.to(x), x)


def decorrelate(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `recorrelate`."""
    if x.shape[1] != 3:
        return x
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(COLOUR).to(x), x)


def _frequencies(size: int) -> torch.Tensor:
    """|f| of each coefficient of an rfft2 of a size x size image: size x (size // 2 + 1)."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
    return torch.sqrt(fx**2 + fy**2)


class FourierImage(nn.Module):
    """Lucid's image: N x C x size x size in (0, 1) from a spectrum scaled by 1/f (Olah et al. 2017).

    The spectrum (N x C x size x size//2+1, complex, as real pairs) is the parameter; low
    frequencies get large steps, so the image forms from coarse to fine instead of as
    high-frequency noise. `/ 4` is Lucid's constant, which keeps the sigmoid's input moderate.
    """

    scale: torch.Tensor  # a buffer

    def __init__(self, n: int, channels: int, size: int, generator: torch.Generator, sd: float = 0.01, decay: float = 1.0):
        super().__init__()
        self.size = size
        self.register_buffer("scale", (1.0 / _frequencies(size).clamp(min=1.0 / size) ** decay).float())
        self.spectrum = nn.Parameter(torch.randn(n, channels, size, size // 2 + 1, 2, generator=generator) * sd)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4
        return torch.sigmoid(recorrelate(image))

    @classmethod
    def from_image(cls, image: torch.Tensor, generator: torch.Generator | None = None) -> FourierImage:
        """The parameterisation whose forward gives `image` (N x C x S x S, values in (0, 1)) back."""
        n, channels, size, _ = image.shape
        param = cls(n, channels, size, generator or torch.Generator().manual_seed(0))
        logits = decorrelate(torch.logit(image.double())) * 4
        spectrum = torch.fft.rfft2(logits, norm="ortho") / param.scale.double()
        with torch.no_grad():
            param.spectrum.copy_(torch.view_as_real(spectrum).float())
        return param


class MacoImage(nn.Module):
    """MaCo's image (Fel et al. 2023): a fixed magnitude spectrum, an optimised phase.

    magnitude: C x size x size//2+1, the amplitudes of the orthonormal FFT of images in the
    space this image is built in (logits of decorrelated colours; see `amplitude_spectrum`).
    The optimiser can move structure around but not change how much of it there is at each
    frequency, which keeps it on natural-looking images. MaCo standardises its image
    because its ImageNet spectrum comes in arbitrary units; this one comes in the image's
    own units, so a real image is reachable with its own magnitude and no rescaling is needed.
    """

    magnitude: torch.Tensor  # a buffer

    def __init__(self, n: int, magnitude: torch.Tensor, generator: torch.Generator):
        super().__init__()
        channels, size, _ = magnitude.shape
        self.size = size
        self.register_buffer("magnitude", magnitude.float())
        self.phase = nn.Parameter(torch.randn(n, channels, size, size // 2 + 1, generator=generator))

    def forward(self) -> torch.Tensor:
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        return torch.sigmoid(recorrelate(torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")))


def resize_spectrum(magnitude: torch.Tensor, size: int) -> torch.Tensor:
    """C x H x (W//2+1) amplitudes -> C x size x (size//2+1).

    The rows run 0, 1, ..., -1 in frequency; they are shifted to put 0 in the middle
    before interpolating, so that high positive and negative frequencies do not blend.
    """
    if magnitude.shape[1] == size and magnitude.shape[2] == size // 2 + 1:
        return magnitude
    shifted = torch.fft.fftshift(magnitude, dim=1)
    resized = F.interpolate(shifted[None].float(), size=(size, size // 2 + 1), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    # orthonormal amplitudes grow with the side length at a given per-pixel contrast
    return torch.fft.ifftshift(resized, dim=1) * (size / magnitude.shape[1])


def amplitude_spectrum(images: torch.Tensor) -> torch.Tensor:
    """N x C x H x W images in display space -> C x H x (W//2+1): the mean amplitude of their orthonormal
    FFT in MacoImage's space (logits of decorrelated colours; the logit undone by its sigmoid)."""
    eps = 1 / 512  # half a grey level: keeps black and white pixels finite
    logits = torch.logit(images.double().clamp(eps, 1 - eps))
    return torch.fft.rfft2(decorrelate(logits), norm="ortho").abs().mean(0)


def augment(images: torch.Tensor, method: str, generator: torch.Generator) -> torch.Tensor:
    """One random affine view per image: Lucid's jitter, scale and rotation, or MaCo's crop.

    The random numbers come from a CPU generator, so a seed gives the same views on any device.
    """
    n = images.shape[0]
    if method == "fourier":
        zoom = torch.empty(n, dtype=torch.float64).uniform_(0.9, 1.1, generator=generator)
        angle = torch.empty(n, dtype=torch.float64).uniform_(-10, 10, generator=generator) * math.pi / 180
        shift = torch.empty(n, 2, dtype=torch.float64).uniform_(-1, 1, generator=generator) * (16 / 224)
    else:
        zoom = torch.empty(n, dtype=torch.float64).uniform_(0.5, 1.0, generator=generator)  # crop side / image side
        angle = torch.zeros(n, dtype=torch.float64)
        shift = torch.empty(n, 2, dtype=torch.float64).uniform_(-1, 1, generator=generator) * (1 - zoom)[:, None]
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = zoom * torch.cos(angle), -zoom * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = zoom * torch.sin(angle), zoom * torch.cos(angle)
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)


MAX_STEPS = 100_000  # optimisation steps: the paper's visualisations take a few hundred to a few thousand
MAX_SIZE = 1024  # pixels a side: far beyond what feature visualisation uses, well inside memory


@dataclass(frozen=True)
class UnitImage(Result):
    """One unit's feature visualisation (for one seed), as recorded in `visualizations`.

    Args (fields):
        activation: the unit's spatially summed activation on its own image.
        activations: every unit's spatially summed activation on this image, by unit ("original", "c1" ..
            "ck", "r"; "original" alone for a channel of the stored model).
        selectivity: for c'_j, `activation` over the largest other new unit's on the same image; None when
            that denominator is not positive (unbounded) and for the original channel and r.
        selectivity_reading: what the selectivity says, in words.
        method: "maco" or "fourier".
        steps: optimisation steps.
        size: the image's side in pixels.
        seed: the random seed.
        device: the device it ran on ("cpu", "cuda:0").
        seconds: the wall time of the seed's whole batch (every unit together).
        failed: the unit never activated, even restarted from a store image: no picture (`image` None).
        reason: why it failed; None when it did not.
        restarted: it was restarted from the store image it activates most on.
        image: the PNG's absolute path (a size x size RGB image in [0, 1]); None when it failed.
    """

    activation: float
    activations: dict[str, float]
    selectivity: float | None
    selectivity_reading: str
    method: str
    steps: int
    size: int
    seed: int
    device: str
    seconds: float
    failed: bool
    reason: str | None
    restarted: bool
    image: str | None


@dataclass(frozen=True)
class Visualization(Result):
    """The feature visualisations of one seed: one image per unit, all optimised in one batch.

    Args (fields):
        units: by unit, in order: "original", "c1" .. "ck", "r" for a run; "original" alone for a channel.

    Returns (of `to_dict()`): {unit: `UnitImage.to_dict()`}, the JSON of `polysem visualize --format json`.

    Example:
        >>> shown = visualize(store, run.run_id, steps=256, size=64)
        >>> [(unit, round(v.activation, 1), v.failed) for unit, v in shown.units.items()]
        [('original', 41.3, False), ('c1', 37.9, False), ('c2', 35.2, False), ('r', 0.0, True)]
    """

    units: dict[str, UnitImage]

    def first(self) -> UnitImage:
        """The first unit's image (every unit of a seed shares method, steps, size, seed, device and seconds)."""
        return next(iter(self.units.values()))

    def to_dict(self) -> dict[str, Any]:
        return {unit: image.to_dict() for unit, image in self.units.items()}


@dataclass
class Target:
    """What to maximise: `readout` maps the hooked module's output (N x C' x h x w, or N x ... x C' for a Linear)
    to N x U x P, each unit's values at the P positions that count."""

    model: nn.Module
    module: nn.Module
    units: tuple[str, ...]
    readout: Callable[[torch.Tensor], torch.Tensor]
    channel: int
    run_id: str | None = None
    constant: tuple[str, ...] = ()  # units with no weights and no bias: 0 on every image


def run_target(model: nn.Module, layer_name: str, channel: int, run_id: str | None = None,
               positions: str = DEFAULT_POSITIONS) -> Target:
    """The original channel and its c'1..c'k, r in a disentangled model (layer_name is a DisentangledLayer)."""
    layer = cast(DisentangledLayer, model.get_submodule(layer_name))
    concepts = tuple(u for u in layer.units[channel] if u != "r")  # c1 .. ck
    index = [layer.unit_index(channel, u) for u in concepts]
    ir = layer.unit_index(channel, "r")

    def readout(out):
        # merge computes channel c as sum_j c'_j - (k - 1) r; the other rows of merge are not needed
        maps = unit_maps(out, layer.expanded, positions)
        units = [maps[:, i] for i in index]
        return torch.stack([sum(units) - (len(units) - 1) * maps[:, ir], *units, maps[:, ir]], 1)

    def empty(i: int) -> bool:
        bias = layer.expanded.bias
        return not layer.expanded.weight[i].any() and (bias is None or not bias[i])

    return Target(model, layer.expanded, ("original", *concepts, "r"), readout, channel, run_id,
                  ("r",) if empty(ir) else ())


def channel_target(model: nn.Module, layer_name: str, channel: int, positions: str = DEFAULT_POSITIONS) -> Target:
    layer = model.get_submodule(layer_name)
    return Target(model, layer, ("original",), lambda out: unit_maps(out, layer, positions)[:, channel : channel + 1],
                  channel)


def optimise(target: Target, *, channels: int, method: str = "maco", steps: int = 512, size: int = 224, seed: int = 0,
             device: torch.device = CPU, to_input: Callable = lambda x: x,
             magnitude: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
    """U x channels x size x size images in [0, 1], image u maximising unit u; one batch for all units.

    to_input maps display-space images to the model's input (its normalisation);
    magnitude (channels x H x W//2+1) is required for maco.
    """
    return optimise_units(target, channels=channels, method=method, steps=steps, size=size, seed=seed, device=device,
                          to_input=to_input, magnitude=magnitude, progress=progress)[0]


def optimise_units(target: Target, *, channels: int, method: str = "maco", steps: int = 512, size: int = 224,
                   seed: int = 0, device: torch.device = CPU, to_input: Callable = lambda x: x,
                   magnitude: torch.Tensor | None = None, progress: bool = True, units: list[int] | None = None,
                   start: torch.Tensor | None = None) -> tuple[torch.Tensor, list[bool]]:
    """`optimise` for the units at indices `units` (default all), one image each, and for each whether
    its gradient was ever non-zero (False: the unit never activated, the image is its starting one).

    start (len(units) x channels x size x size, display space): the images to start from instead of
    random ones (fourier: the spectrum that gives them; maco: their phase with the fixed magnitude).
    """
    from polysem.util.progress import progress_bar

    chosen = list(range(len(target.units))) if units is None else list(units)
    n = len(chosen)
    generator = torch.Generator().manual_seed(seed)
    image: FourierImage | MacoImage
    optimiser_class: type[torch.optim.Adam | torch.optim.NAdam]
    if method == "fourier":
        image = FourierImage(n, channels, size, generator)
        if start is not None:
            image = FourierImage.from_image(start.clamp(1 / 512, 1 - 1 / 512), generator)
        optimiser_class, lr = torch.optim.Adam, 0.05  # Lucid's default
    elif method == "maco":
        if magnitude is None:
            raise RunError("maco needs a magnitude spectrum")
        image = MacoImage(n, resize_spectrum(magnitude, size), generator)
        if start is not None:
            with torch.no_grad():
                image.phase.copy_(maco_phase(start))
        optimiser_class, lr = torch.optim.NAdam, 0.3  # MaCo's 1.0 overshoots with this spectrum's units
    else:
        raise RunError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    image.to(device)
    parameter = next(image.parameters())
    optimiser = optimiser_class(image.parameters(), lr=lr)
    rows = torch.arange(n, device=device)
    columns = torch.tensor(chosen, device=device)
    live = torch.zeros(n, dtype=torch.bool, device=device)
    with progress_bar(f"visualize {n} unit{'s' if n > 1 else ''} ({method})", steps, progress, unit="steps") as advance:
        for _ in range(steps):
            optimiser.zero_grad()
            views = augment(image(), method, generator)
            maps = target.readout(_forward(target, to_input(views)))
            (-maps[rows, columns].sum()).backward()
            assert parameter.grad is not None  # the image's parameter is in the graph
            live |= parameter.grad.reshape(n, -1).abs().amax(1) > 0
            optimiser.step()
            advance(1)
    with torch.no_grad():
        return image().detach().cpu(), live.cpu().tolist()


def maco_phase(images: torch.Tensor) -> torch.Tensor:
    """The phase of images (N x C x S x S, display space) in MacoImage's space: with MaCo's fixed
    magnitude it gives an image with their structure (where the edges and colours are)."""
    eps = 1 / 512
    logits = torch.logit(images.double().clamp(eps, 1 - eps))
    return torch.fft.rfft2(decorrelate(logits), norm="ortho").angle().float()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W -> N x C x size x size (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)


def _forward(target: Target, x: torch.Tensor) -> torch.Tensor:
    try:
        return forward_to(target.model, target.module, x)
    except (RuntimeError, AssertionError) as error:  # torchvision's ViT asserts its image size
        raise RunError(f"the model does not run on {tuple(x.shape[-2:])} images ({str(error).splitlines()[0]}); "
                       "choose a `size` the model accepts, e.g. its input size") from error


def unit_activations(target: Target, images: torch.Tensor, to_input: Callable, device) -> np.ndarray:
    """U x U: [i, j] = activation of unit j on image i, summed over the positions that count."""
    with torch.no_grad():
        maps = target.readout(_forward(target, to_input(images.to(device))))
    return maps.sum(dim=2).double().cpu().numpy()


def _normalize_of(transform, split: str):
    """The Normalize that makes the model's inputs: the transform's (itself or a step of its Compose), or for a
    store made from Datasets the one given with `polysem.use`, else the split's Dataset's; None: none."""
    from polysem.ingest.objects import DatasetSource, find_normalize

    if isinstance(transform, DatasetSource):
        return transform.normalization(split)
    return find_normalize(transform)


def input_normalisation(transform, split: str = SCREEN_SPLIT) -> Callable[[torch.Tensor], torch.Tensor]:
    """Display space [0, 1] -> model input: the transform's Normalize (`_normalize_of`); else identity."""
    op = _normalize_of(transform, split)
    if op is None:
        return lambda x: x
    mean, std = torch.tensor(op.mean, dtype=torch.float32), torch.tensor(op.std, dtype=torch.float32)
    return lambda x: (x - mean.to(x).view(1, -1, 1, 1)) / std.to(x).view(1, -1, 1, 1)


def input_display(transform, split: str = SCREEN_SPLIT) -> Callable[[torch.Tensor], torch.Tensor]:
    """The inverse of `input_normalisation`: model input -> display space."""
    op = _normalize_of(transform, split)
    if op is None:
        return lambda x: x
    mean, std = torch.tensor(op.mean, dtype=torch.float32), torch.tensor(op.std, dtype=torch.float32)
    return lambda x: x * std.to(x).view(1, -1, 1, 1) + mean.to(x).view(1, -1, 1, 1)


def store_images(store: Store, transform, n: int, data_dir=None) -> torch.Tensor:
    """Up to n train images of the store after the model's transform (a fixed pseudo-random choice)."""
    from polysem.ingest.objects import record_images
    from polysem.method.features import remap_paths
    from polysem.util.images import ImageRecord, collate_one_size

    rows = store.reads.spread_images(split=SCREEN_SPLIT, limit=n).to_pylist()
    if not rows:
        raise RunError(f"the store has no {SCREEN_SPLIT} images; ingest them first: polysem ingest DATA_DIR --split {SCREEN_SPLIT}")
    rows = remap_paths(store, rows, SCREEN_SPLIT, data_dir)
    dataset = record_images([ImageRecord(r["image_id"], r["path"], r["target"]) for r in rows], transform)
    _, images, failures = collate_one_size([dataset[i] for i in range(len(rows))], "the store's train images")
    if failures:
        raise RunError(f"cannot read {rows[failures[0][0]]['path']}: {failures[0][1]}")
    return images


def input_side(samples: torch.Tensor) -> int:
    """The side of the store's images after its transform (the model's input), the default `size`; refused when
    they are not square or out of range."""
    height, width = samples.shape[-2:]
    if height != width or not 8 <= height <= MAX_SIZE:
        raise RunError(f"the store's images are {height} x {width} pixels after its transform; give `size` (a side "
                       f"from 8 to {MAX_SIZE} the model accepts)")
    return int(height)


def visualize(store: Store | str | os.PathLike, run_id: str | None = None, *, channel: int | None = None,
              method: str = "maco", steps: int = 512, size: int | None = None, seed: int = 0,
              seeds: list[int] | None = None, device: str = "auto", data_dir=None,
              progress: bool = True) -> Visualization | list[Visualization]:
    """Feature visualisations of a run's units (or of one channel of the stored model), recorded in the store.

    Args:
        store: the store, or its folder.
        run_id: a run: its original channel, c'_1 .. c'_k and r. Or None and `channel`.
        channel: a channel of the stored model (instead of `run_id`).
        method: "maco" (phase only, the store's own magnitude spectrum) or "fourier" (Lucid).
        steps: optimisation steps, 1 .. 100000.
        size: the images' side in pixels, 8 .. 1024; None: the side of the store's images after the store's
            transform (the model's input: 224 for ImageNet's preprocessing).
        seed: the random seed (the same seed gives the same images on one device).
        seeds: several seeds in one call, recorded together (instead of `seed`).
        device: "auto", "cpu" or "cuda".
        data_dir: the folder that holds the images now, if they moved since ingest.
        progress: show a progress bar.

    Returns:
        A `Visualization` (per unit a `UnitImage`: its image, its activation on it and every other unit's);
        with `seeds`, one per seed, in their order.

    A unit whose optimisation ends with its own activation at or below 0, or whose gradient was zero
    at every step (it never activated: the image is only its starting point), is restarted from the
    store image it activates most on; if that fails too, or no store image activates it, the unit is
    reported failed with the reason (`failed` True, `reason`, `image` None) and no picture is
    written or recorded for it.

    Example:
        >>> shown = visualize(store, run.run_id, seeds=[0, 1], steps=256, size=64)
        >>> [v.units["c1"].image for v in shown]
        ['.../artifacts/visualizations/3f2a9c01bd/maco-256steps-64px-seed0-1a2b3c4d-c1.png', '...seed1...']
    """
    from polysem.ingest.models import resolve_device, stored_transform
    from polysem.method.runs import base_model, load_model, run_on_its_layer, run_row

    store = as_store(store)
    check_text("run_id", run_id, none=True)
    channel = check_int("channel", channel, 0, COUNT_MAX, none=True)
    check_text("method", method)
    if method not in METHODS:
        raise RunError(f"unknown `method` '{method}'; use one of {', '.join(METHODS)}")
    steps = check_int("steps", steps, 1, MAX_STEPS, hint=" optimisation steps")
    size = check_int("size", size, 8, MAX_SIZE, hint=" pixels a side", none=True)
    seed = check_int("seed", seed, 0, COUNT_MAX)
    if seeds is not None:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)):
            raise ArgumentError(f"`seeds` must be a list of whole numbers, got {type(seeds).__name__}")
        seeds = [check_int("seeds", s, 0, COUNT_MAX) for s in seeds]
        if seed != 0:
            raise RunError("give `seed` or `seeds`, not both (`seeds` lists every seed to run)")
    check_text("device", device)
    check_path("data_dir", data_dir, none=True)
    check_bool("progress", progress)
    store.require()
    several = seeds is not None
    seed_list = _seed_list(seed, seeds)
    if (run_id is None) == (channel is None):
        raise RunError("give a `run_id` or `channel`=C (a channel of the stored model), one of the two")
    if run_id is not None:
        store, _ = run_on_its_layer(store, run_id)
    meta = store.meta()
    layer_name, positions = meta["layer"], layer_positions(meta["layer_shape"])
    if run_id is not None:
        run = run_row(store, run_id)
        model = load_model(store, run_id)
        transform = stored_transform(store).fn
        target = run_target(model, layer_name, run["channel"], run_id, positions)
    else:
        assert channel is not None  # given when run_id is not (checked above)
        model, _, layer, transform = base_model(store)
        units = layer.weight.shape[0]
        if not 0 <= channel < units:
            raise RunError(f"channel {channel} is out of range; the layer has channels 0..{units - 1}")
        target = channel_target(model, layer_name, channel, positions)
    torch_device = resolve_device(device)
    model.to(torch_device)
    to_display, to_input = input_display(transform), input_normalisation(transform)
    samples = to_display(store_images(store, transform, SPECTRUM_IMAGES if method == "maco" else 1, data_dir))
    size = size if size is not None else input_side(samples)
    magnitude = amplitude_spectrum(samples) if method == "maco" else None
    pool: list[torch.Tensor] = []  # the store images a dead unit restarts from, read when first needed

    def restart_images() -> torch.Tensor:
        if not pool:
            found = samples if len(samples) >= RESTART_IMAGES else to_display(
                store_images(store, transform, RESTART_IMAGES, data_dir))
            pool.append(resize_images(found[:RESTART_IMAGES], size))
        return pool[0]

    options = {"channels": samples.shape[1], "method": method, "steps": steps, "size": size, "device": torch_device,
               "to_input": to_input, "magnitude": magnitude, "progress": progress}
    done = []
    for s in seed_list:
        start = time.perf_counter()
        images, acts, failures, restarted = _optimise_with_restarts(target, restart_images, seed=s, **options)
        seconds = time.perf_counter() - start
        config = {"method": method, "steps": steps, "size": size, "seed": s, "device": str(torch_device)}
        result: dict[str, dict[str, Any]] = {}
        for i, unit in enumerate(target.units):
            own = {u: float(acts[i, j]) for j, u in enumerate(target.units)}
            selectivity = _selectivity(unit, own)
            result[unit] = {"activation": own[unit], "activations": own, "selectivity": selectivity,
                            "selectivity_reading": selectivity_reading(unit, selectivity), **config,
                            "seconds": seconds, "failed": unit in failures, "reason": failures.get(unit),
                            "restarted": unit in restarted}
        done.append((config, images, result, seconds))
    model.cpu()
    paths = _record(store, target, done)
    for (_, _, result, _), seed_paths in zip(done, paths, strict=True):
        for unit in result:
            result[unit]["image"] = str(store.path / seed_paths[unit]) if unit in seed_paths else None
    results = [Visualization({unit: UnitImage(**values) for unit, values in result.items()})
               for _, _, result, _ in done]
    return results if several else results[0]


def _seed_list(seed: int, seeds: list[int] | None) -> list[int]:
    seed_list = list(seeds) if seeds is not None else [seed]
    if not seed_list:
        raise RunError("`seeds` is empty; give at least one seed, e.g. 0,1,2")
    if len(set(seed_list)) != len(seed_list):
        raise RunError(f"`seeds` repeats a seed ({', '.join(map(str, seed_list))}); give each seed once")
    for s in seed_list:
        if not 0 <= s < 2**63:
            raise RunError(f"`{'seeds' if seeds is not None else 'seed'}` must be from 0 to 2**63 - 1, got {s}")
    return seed_list


RESTART_IMAGES = 64  # store images scored to restart a unit that never activated


def _optimise_with_restarts(target: Target, restart_images: Callable[[], torch.Tensor], *, seed: int, **options):
    """optimise_units for every unit; a unit that did not activate (own activation <= 0 at the end, or a zero
    gradient at every step) starts again from the store image it activates most on. Returns the images,
    the U x U activations on them, {unit: reason} of the units that failed even so, and the restarted units."""
    device, to_input = options["device"], options["to_input"]
    images, live = optimise_units(target, seed=seed, **options)
    acts = unit_activations(target, images, to_input, device)
    dead = [i for i in range(len(target.units)) if acts[i, i] <= 0 or not live[i]]
    failures = {unit: f"{unit} has no weights (channel {target.channel}'s inputs all went to concepts): 0 on every image, "
                      "nothing to show" for unit in target.constant}
    dead = [i for i in dead if target.units[i] not in failures]
    restarted: list[str] = []
    if not dead:
        return images, acts, failures, restarted
    pool = restart_images()
    pool_acts = unit_activations(target, pool, to_input, device)  # image x unit
    fix = "try other `seeds`, the other `method` or the model's input `size`"

    def dead_reason(unit: str, activation: float, moved: bool) -> str:
        """Why a unit's optimisation had nothing to follow: no activation, or one the image does not change."""
        if activation > 0 and not moved:
            return (f"{unit} does not respond to the image (its activation stays {activation:.3g}, its bias and "
                    "constant inputs; the gradient was 0 at every step)")
        return f"{unit} never activated (activation {activation:.3g}{'' if moved else ', gradient 0'})"

    for i in dead:
        if pool_acts[:, i].max() <= 0:
            unit = target.units[i]
            failures[unit] = (f"{dead_reason(unit, float(acts[i, i]), bool(live[i]))}, nor on any of {len(pool)} "
                              f"store images: it may never activate; if it should, {fix}")
    again = [i for i in dead if target.units[i] not in failures]
    if again:
        start = pool[[int(np.argmax(pool_acts[:, i])) for i in again]]
        new, new_live = optimise_units(target, seed=seed, **{**options, "progress": False}, units=again, start=start)
        new_acts = unit_activations(target, new, to_input, device)
        for k, i in enumerate(again):
            unit = target.units[i]
            if new_acts[k, i] > 0 and new_live[k]:
                images[i], acts[i] = new[k], new_acts[k]
                restarted.append(unit)
            else:
                acts[i] = new_acts[k]
                failures[unit] = (f"{dead_reason(unit, float(new_acts[k, i]), bool(new_live[k]))}, even restarted "
                                  f"from the store image it activates most on; {fix}")
    return images, acts, failures, restarted


def _selectivity(unit: str, acts: dict) -> float | None:
    """act(c'_j) / the largest act(c'_j') of the other new channels on c'_j's image (for k = 2: act(c'1)/act(c'2));
    None for the original and r, or when that denominator is not positive."""
    others = [a for u, a in acts.items() if u.startswith("c") and u != unit]
    if not unit.startswith("c") or not others or max(others) <= 0:
        return None
    return acts[unit] / max(others)


def png_bytes(image: torch.Tensor) -> bytes:
    """C x H x W in [0, 1] -> PNG (grey for one channel)."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(store: Store, target: Target, done: list) -> list[dict]:
    """PNGs first (new names), then one transaction for every seed; on failure the new PNGs go and the store
    is as it was. A failed unit gets a row (its reason in `failure`) but no PNG (`image` NULL).

    done: (config, images, result, seconds) per seed. Returns {unit: PNG path in the store} per seed."""
    subject = target.run_id if target.run_id is not None else f"channel-{target.channel}"
    token = uuid.uuid4().hex[:8]
    created_at = now()
    written = []
    every_paths, every_rows = [], []
    try:
        for config, images, result, seconds in done:
            paths = {unit: ARTIFACTS / subject / f"{config['method']}-{config['steps']}steps-{config['size']}px-"
                     f"seed{config['seed']}-{token}-{unit}.png" for unit in target.units if not result[unit]["failed"]}
            for unit, image in zip(target.units, images, strict=True):
                if unit in paths:
                    with atomic.atomic_path(store.path / paths[unit]) as tmp:
                        tmp.write_bytes(png_bytes(image))
                    written.append(store.path / paths[unit])
            rows = []
            for unit in target.units:
                acts = result[unit]["activations"]
                rows.append({"unit": unit, "device": config["device"],
                             "image": str(paths[unit]) if unit in paths else None,
                             "act_original": acts["original"], "act_c1": acts.get("c1"), "act_c2": acts.get("c2"),
                             "act_r": acts.get("r"), "selectivity": result[unit]["selectivity"], "seconds": seconds,
                             "created_at": created_at, "failure": result[unit]["reason"],
                             "act_concepts": [a for u, a in acts.items() if u.startswith("c")] or None})
            key = {"run_id": target.run_id, "channel": target.channel,
                   **{name: config[name] for name in ("method", "steps", "size", "seed")}}
            every_paths.append(paths)
            every_rows.append((key, rows))
        old = []
        with store.transaction() as tx:
            for key, rows in every_rows:
                old += record_visualizations(tx, key, rows)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for image_path in old:  # the images these rows replaced (NULL for a unit that failed)
        replaced = recorded_path(store.path, image_path, str(ARTIFACTS))  # only a file polysem could have written
        if replaced is not None:
            replaced.unlink(missing_ok=True)
    return every_paths


def latest_visualizations(store: Store, run_id: str | None = None, channel: int | None = None) -> list[dict]:
    """The most recent visualisation of a run (or channel): one row per unit, [] when there is none."""
    return store.reads.latest_visualizations(run_id=run_id, channel=channel).to_pylist()
