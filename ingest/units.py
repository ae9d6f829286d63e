"""How a layer's tensors map to units and positions: the one place that knows a Conv2d from a Linear.

A Conv2d's tensors are N x C x H x W: units on dim 1, positions on dims 2 and 3. A Linear applied per token
or position (a ViT's `mlp.0`, a ConvNeXt's channels-last `block.3`) has tensors N x ... x D: units on the
last dim, positions on every dim between the first and the last. Which positions count is recorded per store
(`query.meta.POSITIONS`): all of them, the class token alone (`cls`, the first entry of dim 1) or the patch tokens (`patch`,
the rest of dim 1); the last two need exactly one position axis (tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from polysem.query.meta import DEFAULT_POSITIONS, POSITIONS, layer_positions

__all__ = ["DEFAULT_POSITIONS", "POSITIONS", "UnitLayer", "counted", "is_linear", "layer_positions",
           "position_count", "unit_maps", "unit_sums"]

UnitLayer = nn.Conv2d | nn.Linear


def is_linear(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear)


def counted(tensor: torch.Tensor, layer: nn.Module, positions: str = DEFAULT_POSITIONS) -> torch.Tensor:
    """The part of a layer's input or output at the positions that count (a view; a conv's is the whole)."""
    if not is_linear(layer) or positions == "all":
        return tensor
    if tensor.dim() != 3:
        raise ValueError(f"positions '{positions}' need a token axis (N x T x D); the tensor is "
                         f"{' x '.join(map(str, tensor.shape))}")
    return tensor[:, :1] if positions == "cls" else tensor[:, 1:]


def unit_maps(tensor: torch.Tensor, layer: nn.Module, positions: str = DEFAULT_POSITIONS) -> torch.Tensor:
    """N x C x P: each unit's values at the P positions that count (conv: P = H * W, row-major)."""
    if not is_linear(layer):
        return tensor.flatten(2)
    return counted(tensor, layer, positions).flatten(1, -2).transpose(1, 2)


def unit_sums(tensor: torch.Tensor, layer: nn.Module, positions: str = DEFAULT_POSITIONS) -> torch.Tensor:
    """N x C: each unit's sum over the positions that count (the paper's sum over space for a conv)."""
    if not is_linear(layer):
        return tensor.sum(dim=(2, 3))
    return counted(tensor, layer, positions).flatten(1, -2).sum(1)


def position_count(tensor: torch.Tensor, layer: nn.Module, positions: str = DEFAULT_POSITIONS) -> int:
    """The number of positions that count in a layer's output."""
    if not is_linear(layer):
        return int(tensor.shape[2] * tensor.shape[3])
    shape = counted(tensor, layer, positions).shape
    return int(torch.Size(shape[1:-1]).numel())
