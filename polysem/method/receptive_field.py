"""The receptive field of one output position of a layer: the input pixels it can depend on.

Computed with autograd on a geometric stand-in of the model, not by walking its
modules: a walk has to know every architecture (a ResNet's downsample branch runs
beside the main path, so composing modules in order would count its stride twice),
while the gradient follows the real forward pass. In the stand-in every conv
averages its inputs (weights 1/fan_in, no bias), batch norms are identities and
max pools are average pools of the same geometry, and the input is all ones, so
every activation is positive, every ReLU passes its gradient and the gradient is
nonzero exactly on the receptive field, clipped to the image. Double precision
keeps far-away contributions from underflowing.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from polysem.errors import RunError
from polysem.util.hooks import forward_to

__all__ = ["receptive_fields"]

Box = tuple[int, int, int, int]  # top, left, bottom, right; bottom and right exclusive


def _geometric_copy(model: nn.Module) -> nn.Module:
    geometry = copy.deepcopy(model).double().eval()
    for name, module in list(geometry.named_modules()):
        if isinstance(module, nn.modules.conv._ConvNd):
            with torch.no_grad():
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                if module.running_mean is not None and module.running_var is not None:  # both or neither are tracked
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0)
        elif isinstance(module, nn.MaxPool2d):
            # a max pool passes its gradient to one input only; an average pool of the same window to all
            average = nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
            parent, _, child = name.rpartition(".")
            setattr(geometry.get_submodule(parent) if parent else geometry, child, average)
    for parameter in geometry.parameters():
        parameter.requires_grad_(False)
    return geometry


def receptive_fields(model: nn.Module, module: nn.Module, input_shape: tuple[int, ...],
                     positions: list[tuple[int, int]]) -> dict[tuple[int, int], Box]:
    """For each output position (h, w) of `module` (a conv's, N x C x H x W): the input box it sees, clipped to
    the image.

    input_shape: C x H x W of the model input. Returns {(h, w): (top, left, bottom, right)}. A Linear applied per
    token or position is refused: a token mixes the whole image after the first attention block, and the
    stand-in makes no LayerNorm geometric, so its units are shown with the whole image instead.
    """
    if isinstance(module, nn.Linear):
        raise RunError("a Linear layer's units have no receptive-field box here; show the whole image")
    positions = sorted(set(positions))
    if not positions:
        return {}
    name = next(n for n, m in model.named_modules() if m is module)
    geometry = _geometric_copy(model)
    x = torch.ones(len(positions), *input_shape, dtype=torch.float64, requires_grad=True)
    out = forward_to(geometry, geometry.get_submodule(name), x)
    rows = torch.arange(len(positions))
    hs, ws = torch.tensor([p[0] for p in positions]), torch.tensor([p[1] for p in positions])
    (grad,) = torch.autograd.grad(out[rows, 0, hs, ws].sum(), x)
    boxes = {}
    for position, g in zip(positions, grad.abs().sum(1), strict=True):
        ys, xs = g.sum(1).nonzero().flatten(), g.sum(0).nonzero().flatten()
        boxes[position] = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    return boxes
