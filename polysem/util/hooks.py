"""The one hook helper (`hooked`), and running a model only as far as one of its modules (its output or input)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from polysem.errors import RunError

__all__ = ["forward_to", "hooked", "input_of"]


@contextmanager
def hooked(module: nn.Module, hook, *, pre: bool = False) -> Iterator[None]:
    """Register a forward (or forward-pre) hook for the duration of the block; always removed,
    also when the block raises. Every hook polysem sets goes through here."""
    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised by the hook once the module's output is known: the rest of the network is not needed."""


def forward_to(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of `module` (inside `model`) for input x; the layers after it do not run.

    The output keeps its autograd graph, so a caller can differentiate through it.
    The hook is removed in `finally`, also when the model raises.
    """
    return _stop_at(model, module, x, pre=False)


def input_of(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of `module` (inside `model`) for input x; `module` and the layers after it do not run."""
    return _stop_at(model, module, x, pre=True)


def _stop_at(model: nn.Module, module: nn.Module, x: torch.Tensor, pre: bool) -> torch.Tensor:
    seen = {}

    def keep_and_stop(_module, inputs, output=None):
        seen["value"] = inputs[0] if pre else output
        raise _StopForward

    try:
        with hooked(module, keep_and_stop, pre=pre):
            model(x)
    except _StopForward:
        pass
    if "value" not in seen:
        raise RunError(f"the model's forward pass never reached {type(module).__name__}; is it part of the model?")
    return seen["value"]
