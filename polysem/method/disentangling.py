"""The maths of disentangling a channel (docs/method.md sections 5 and 6): no store, no files.

    split_sources       Ineq. 5 for k concepts: which l-1 channels feed one concept only, and the shared rest
    concept_weights     the weight rows of c'_1..c'_k and r
    rho_scores          Eq. 6 for k concepts over the rho grid, on the l-1 feature maps of the concepts
    DisentangledConv    layer l replaced by a widened conv and a fixed merge conv
    DisentangledLinear  the same for a Linear applied per token or position (units on the last axis)

A Linear layer's units are its output features and its l-1 channels its input features; `polysem.ingest.units`
says which axes are units and positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polysem.constants import RHO_GRID
from polysem.errors import RunError
from polysem.ingest.units import DEFAULT_POSITIONS, UnitLayer, is_linear, unit_sums

__all__ = [
    "OBJECTIVES",
    "DisentangledConv",
    "DisentangledLayer",
    "DisentangledLinear",
    "RelevanceWarning",
    "SourceSplit",
    "best_rho",
    "bias_only_concepts",
    "concept_weights",
    "disentangled_layer",
    "positive_only",
    "replace_module",
    "rho_scores",
    "split_sources",
]

OBJECTIVES = ("abs", "positive")
POSITIVE_EPS = 1e-5  # the reference code's denominator guard for the `positive` objective


class RelevanceWarning(UserWarning):
    """A concept class for which the channel is not relevant (Ineq. 2); only raised with force."""


@dataclass(frozen=True)
class SourceSplit:
    """Indices of the l-1 channels that feed one concept only (one tuple per concept), and the shared rest."""

    sources: tuple[tuple[int, ...], ...]
    shared: tuple[int, ...]

    @property
    def k(self) -> int:
        return len(self.sources)

    @property
    def empty_concepts(self) -> list[int]:
        """1-based concepts without a source of their own: their channel would equal the residual."""
        return [j + 1 for j, own in enumerate(self.sources) if not own]


def positive_only(layer: nn.Module) -> bool:
    """Whether `split_sources` gives an input only to a concept it raises (docs/method.md, "Linear units over
    tokens or positions"): a Linear's inputs (a LayerNorm's output) are signed, while a conv's are post-ReLU and
    keep the paper's Ineq. 5 as it is."""
    return is_linear(layer)


def split_sources(arvs, rho: float, positive_only: bool = False) -> SourceSplit:
    """Ineq. 5 for k >= 2 concepts: input i goes to concept j when rho * R_j[i] > R_j'[i] for every other
    concept j'; the lowest such j wins; the rest is shared. For k = 2 this is the paper's rule exactly.

    positive_only (a Linear layer, `positive_only(layer)`): i goes to concept j only when also R_j[i] > 0, so
    no concept gets an input that lowers its own ARV; for inputs >= 0 and a positive weight nothing changes.
    """
    arvs = np.asarray(arvs, np.float64)  # k x C_{l-1}
    owner = np.full(arvs.shape[1], -1)
    for j in range(len(arvs)):
        others = np.delete(arvs, j, axis=0)
        wins = (rho * arvs[j] > others).all(axis=0) & (owner < 0)
        if positive_only:
            wins &= arvs[j] > 0
        owner[wins] = j
    index = np.arange(arvs.shape[1])
    return SourceSplit(tuple(tuple(index[owner == j].tolist()) for j in range(len(arvs))),
                       tuple(index[owner < 0].tolist()))


def concept_weights(weight: torch.Tensor, split: SourceSplit) -> tuple[list[torch.Tensor], torch.Tensor]:
    """weight: C_{l-1} x kh x kw (one output channel of a conv) or C_{l-1} (of a Linear). Returns the rows of
    c'_1..c'_k and of r.

    c'_j keeps its own sources and the shared ones; r keeps the shared ones only, so
    sum_j c'_j - (k - 1) r = weight.
    """
    concepts = []
    for j in range(split.k):
        w = weight.clone()
        w[[i for o, own in enumerate(split.sources) if o != j for i in own]] = 0
        concepts.append(w)
    residual = weight.clone()
    residual[[i for own in split.sources for i in own]] = 0
    return concepts, residual


def bias_only_concepts(weight: torch.Tensor, split: SourceSplit) -> list[int]:
    """1-based concepts whose channel gets nothing from its own sources (none, or all weights 0): it
    carries only the shared inputs and the bias, i.e. it equals the residual."""
    return [j + 1 for j, own in enumerate(split.sources) if not own or not bool(weight[list(own)].abs().sum() > 0)]


def rho_scores(maps, layer: UnitLayer, channel: int, arvs, objective: str = "abs", grid=RHO_GRID,
               batch_size: int = 256, positions: str = DEFAULT_POSITIONS) -> list[dict]:
    """Eq. 6, generalised to k concepts, for each rho of the grid.

    maps: one array per concept of its images' layer inputs: N_j x C_{l-1} x H x W for a conv, N_j x ... x
    C_{l-1} for a Linear (positions between the first and the last axis).
    score = sum over concepts j of the mean over concept j's images of s(c'_j) / sum_{j' != j} s(c'_j'),
    s = sum over positions of |f| (objective 'abs', the paper) or of max(f, 0) with 1e-5 added to each
    denominator ('positive', the reference code). For k = 2 this is the paper's Eq. 6. A Linear sums over the
    store's `positions` (all, cls or patch) and splits its sources by `positive_only`.

    Rules where the paper is silent (docs/method.md states them):
    - a zero denominator with a positive numerator is a perfect separation of that image, not an error:
      `separated` is the sum over concepts of the fraction of such images, and the mean runs over the
      other images; 0/0 counts as 0. rhos rank by `separated`, then by the objective.
    - a rho under which a concept has no source of its own is skipped (`skipped` says why): its
      channel would equal the residual.
    """
    if objective not in OBJECTIVES:
        raise RunError(f"unknown objective '{objective}'; use abs (paper) or positive (reference code)")
    k = len(maps)
    weight = layer.weight.detach().cpu().double()[channel]
    bias = layer.bias.detach().cpu().double()[channel] if layer.bias is not None else torch.zeros((), dtype=torch.float64)
    splits = [split_sources(arvs, rho, positive_only(layer)) for rho in grid]
    kernels = torch.stack([w for split in splits for w in concept_weights(weight, split)[0]])  # (R k) x C [x kh x kw]
    biases = bias.expand(len(kernels)).contiguous()

    def terms(concept_maps: np.ndarray, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per rho: the mean of the finite ratios over the images of concept j, and the fraction separated."""
        ratios = []
        for start in range(0, len(concept_maps), batch_size):
            x = torch.from_numpy(concept_maps[start : start + batch_size]).double()
            if isinstance(layer, nn.Linear):
                f = F.linear(x, kernels, biases)
            else:
                f = F.conv2d(x, kernels, biases, layer.stride, layer.padding, layer.dilation)
            s = unit_sums(f.abs() if objective == "abs" else f.clamp(min=0), layer, positions).view(len(x), len(grid), k)
            own, other = s[..., j], s.sum(-1) - s[..., j]
            if objective == "positive":
                other = other + POSITIVE_EPS
            ratios.append(torch.where(other > 0, own / other.clamp(min=torch.finfo(torch.float64).tiny),
                                      torch.where(own > 0, torch.inf, 0.0)))
        ratio = torch.cat(ratios)  # N_j x R
        infinite = torch.isinf(ratio)
        n_finite = (~infinite).sum(0)
        mean = torch.where(infinite, 0.0, ratio).sum(0) / n_finite.clamp(min=1)
        return mean, infinite.double().mean(0)

    objective_value, separated = torch.zeros(len(grid), dtype=torch.float64), torch.zeros(len(grid), dtype=torch.float64)
    for j, concept_maps in enumerate(maps):
        mean, fraction = terms(concept_maps, j)
        objective_value += mean
        separated += fraction
    rows = []
    for rho, value, sep, split in zip(grid, objective_value.tolist(), separated.tolist(), splits, strict=True):
        empty = split.empty_concepts
        rows.append({"rho": rho, "objective_value": None if empty else value, "separated": None if empty else sep,
                     "n_sources": [len(own) for own in split.sources],
                     "skipped": f"concept {', '.join(map(str, empty))} has no source of its own" if empty else None})
    return rows


def best_rho(scores: list[dict]) -> float:
    """The grid's best rho: most separated images first, then the largest objective; the smallest rho on ties."""
    valid = [row for row in scores if row["skipped"] is None]
    if not valid:
        raise RunError("at every rho of the grid some concept has no l-1 channel of its own (its channel would equal "
                       "the residual); the concepts' ARVs do not separate: choose other concepts, or pass "
                       "`rho`=VALUE `force`")
    return max(valid, key=lambda row: (row["separated"], row["objective_value"]))["rho"]


class DisentangledLayer(nn.Module):
    """Layer l with split channels: `expanded` has C_l + sum_c k_c outputs, `merge` maps them back to C_l.

    A channel c split into k concepts keeps c'_1 at index c; c'_2..c'_k and then r take the next
    k free indices after C_l (for k = 2: C_l + 2j is c'_2 and C_l + 2j + 1 is r, for the j-th channel).
    merge computes c = sum_j c'_j - (k - 1) r, equal to the original channel up to rounding. A bias is
    copied to c'_1..c'_k and r, so it cancels in the merge too. The subclasses build `expanded` and `merge`
    as layers of the original's kind.
    """

    expanded: nn.Conv2d | nn.Linear
    merge: nn.Conv2d | nn.Linear

    def __init__(self, original: UnitLayer, channels: list[int], splits: list[SourceSplit]):
        super().__init__()
        out = original.weight.shape[0]
        self.channels = list(channels)
        self.units: dict[int, dict[str, int]] = {}
        extra, offset = [], out
        for c, split in zip(channels, splits, strict=True):
            self.units[c] = {"c1": c, **{f"c{j + 1}": offset + j - 1 for j in range(1, split.k)}, "r": offset + split.k - 1}
            offset += split.k
        self.expanded, self.merge = self._layers(original, offset)
        with torch.no_grad():
            weight = original.weight.detach().clone()
            for c, split in zip(channels, splits, strict=True):
                concepts, residual = concept_weights(original.weight.detach()[c], split)
                weight[c] = concepts[0]
                extra += [*concepts[1:], residual]
            self.expanded.weight.copy_(torch.cat([weight, torch.stack(extra)]) if extra else weight)
            if original.bias is not None and self.expanded.bias is not None:  # the second follows from the first
                bias = original.bias.detach()
                self.expanded.bias.copy_(torch.cat([bias, bias[[c for c, split in zip(channels, splits, strict=True)
                                                                  for _ in range(split.k)]]]))
            merge = torch.zeros(out, offset)
            merge[:, :out] = torch.eye(out)
            for c, split in zip(channels, splits, strict=True):
                for unit, index in self.units[c].items():
                    merge[c, index] = -(split.k - 1) if unit == "r" else 1.0
            self.merge.weight.copy_(merge.view_as(self.merge.weight))
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def _layers(self, original: UnitLayer, width: int) -> tuple[nn.Conv2d | nn.Linear, nn.Conv2d | nn.Linear]:
        """`expanded` (the original's inputs to `width` outputs) and `merge` (`width` back to the original's)."""
        raise NotImplementedError

    def unit_index(self, channel: int, unit: str) -> int:
        """Index in `expanded`'s output of unit 'c1'..'ck' or 'r' of a disentangled channel."""
        return self.units[channel][unit]

    def forward(self, x):
        return self.merge(self.expanded(x))


class DisentangledConv(DisentangledLayer):
    """A Conv2d with split channels: `expanded` is the widened conv, `merge` a 1x1 conv without bias."""

    def _layers(self, original: UnitLayer, width: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        conv = cast(nn.Conv2d, original)
        # a Conv2d's geometry attributes are 2-tuples (or a padding mode string), typed tuple[int, ...] in torch
        expanded = nn.Conv2d(conv.in_channels, width, cast("tuple[int, int]", conv.kernel_size),
                             cast("tuple[int, int]", conv.stride), cast("str | tuple[int, int]", conv.padding),
                             cast("tuple[int, int]", conv.dilation), bias=conv.bias is not None)
        return expanded, nn.Conv2d(width, conv.out_channels, 1, bias=False)


class DisentangledLinear(DisentangledLayer):
    """A Linear applied per token or position with split units: `expanded` and `merge` are Linears on the
    last axis, so any N x ... x C_{l-1} input works. Put in the Linear's place, the merge runs before the
    nonlinearity that follows it (a GELU is not additive, so a merge after it would change the outputs)."""

    def _layers(self, original: UnitLayer, width: int) -> tuple[nn.Linear, nn.Linear]:
        linear = cast(nn.Linear, original)
        return (nn.Linear(linear.in_features, width, bias=linear.bias is not None),
                nn.Linear(width, linear.out_features, bias=False))


def disentangled_layer(original: UnitLayer, channels: list[int], splits: list[SourceSplit]) -> DisentangledLayer:
    """The original layer with the channels split: a `DisentangledLinear` for a Linear, else a `DisentangledConv`."""
    kind = DisentangledLinear if is_linear(original) else DisentangledConv
    return kind(original, channels, splits)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


