"""Channel attribution (docs/method.md section 1) and input window sums (section 3), batched.

One forward pass per batch gives both: a forward hook on the layer of interest
keeps its input f_{l-1} and turns its output f_l into a fresh leaf, so the one
backward pass of the target logits runs only through the layers after l. The layer is
a Conv2d or a Linear applied per token or position (`ingest.units`: window 1, the
positions that count summed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from polysem.ingest.units import DEFAULT_POSITIONS, is_linear, position_count, unit_sums
from polysem.util.hooks import hooked

__all__ = ["BatchAttribution", "attribute_batch", "attribute_layers", "conv_padding", "exact_math", "input_window_sums", "layer_input_sums", "layer_probe", "layers_probe"]


@dataclass
class BatchAttribution:
    """Per-image results for a batch of N images.

    attribution: N x C_l   sum over positions of f_l * d y_t / d f_l
    input_sum:   N x (C_{l-1} * kh * kw)   window sums S(x), flattened like the weight (a Linear: N x D_in)
    logits:      N x K
    positions:   number of output positions of layer l that count (a conv: H_l * W_l)
    targets:     N   the logit each image was attributed to (the given one, or its argmax)
    """

    attribution: torch.Tensor
    input_sum: torch.Tensor
    logits: torch.Tensor
    positions: int
    targets: torch.Tensor


@contextmanager
def layer_probe(layer: nn.Module, *, detach_output: bool = True) -> Iterator[dict]:
    """Record the layer's input and output while the block runs.

    With detach_output, the output is replaced by a leaf tensor that requires
    grad: gradients then stop there instead of flowing into earlier layers.
    The hook is removed on exit, also when the block raises.
    """
    with layers_probe([layer], detach_output=detach_output) as (seen,):
        yield seen


@contextmanager
def layers_probe(layers: list[nn.Module], *, detach_output: bool = True) -> Iterator[list[dict]]:
    """`layer_probe` for several layers in one forward pass: each output that does not depend on an earlier
    probed layer's becomes a leaf (with detach_output), so the one backward pass stops at the first of them;
    a later layer's output stays in the graph, and its gradient is the same derivative of the logits."""
    seen: list[dict] = [{"calls": 0} for _ in layers]

    def hook_for(record: dict):
        def hook(module, inputs, output):
            record["calls"] += 1
            record["input"] = inputs[0].detach()
            if not detach_output:
                record["output"] = output
                return output
            kept = output if output.requires_grad else output.detach().requires_grad_(True)
            record["output"] = kept
            # A clone, so that an in-place op after the layer cannot change the recorded output.
            return kept.clone()
        return hook

    with ExitStack() as hooks:
        for layer, record in zip(layers, seen, strict=True):
            hooks.enter_context(hooked(layer, hook_for(record)))
        yield seen


def conv_padding(layer: nn.Conv2d, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding the conv applies, also for padding='same'/'valid'."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for k, d in zip(reversed(layer.kernel_size), reversed(layer.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return cast("tuple[int, int, int, int]", tuple(pads))  # two pads for each of a Conv2d's two dimensions
    ph, pw = layer.padding
    return (pw, pw, ph, ph)


def input_window_sums(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """S(x): for each input channel i and kernel offset (u, v), the sum of the input
    values that offset multiplies over all output positions.

    x: N x C_{l-1} x H x W  ->  N x (C_{l-1} * kh * kw), ordered like weight.flatten(1).
    For a 1x1 conv with stride 1 this is the plain spatial sum.
    """
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    dh, dw = layer.dilation
    padded = F.pad(x, conv_padding(layer, x.shape[2], x.shape[3]))
    out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    sums = x.new_empty(x.shape[0], x.shape[1], kh, kw)
    for u in range(kh):
        for v in range(kw):
            window = padded[:, :, u * dh : u * dh + sh * (out_h - 1) + 1 : sh, v * dw : v * dw + sw * (out_w - 1) + 1 : sw]
            sums[:, :, u, v] = window.sum(dim=(2, 3))
    return sums.flatten(1)


@contextmanager
def exact_math() -> Iterator[None]:
    """fp32 convolutions and matrix products on GPUs too: cuDNN's TF32 default would change
    attributions and logits in the fourth digit, and the disentangled model's check compares
    logits to 1e-4."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def layer_input_sums(x: torch.Tensor, layer: nn.Module, positions: str = DEFAULT_POSITIONS) -> torch.Tensor:
    """S(x) of a conv (`input_window_sums`) or of a Linear (window 1: its input summed over the positions that
    count, N x D_in)."""
    if is_linear(layer):
        return unit_sums(x, layer, positions)
    return input_window_sums(x, cast("nn.Conv2d", layer))


def attribute_batch(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                    targets: torch.Tensor | None, positions: str = DEFAULT_POSITIONS) -> BatchAttribution:
    """Gradient x activation of each image's target logit at `layer`, summed over space (a Linear: over
    the positions that count, `ingest.units`).

    images: N x C x H x W on the model's device; targets: N logit indices, or None for each image's own
    predicted (argmax) logit (`ingest --target predicted`).
    The model's parameters may be frozen: gradients are taken w.r.t. f_l only.
    Images do not interact (eval mode), so the gradient of the summed target
    logits gives every image's own gradient in one backward pass.
    """
    return attribute_layers(model, [(layer, positions)], images, targets)[0]


def attribute_layers(model: nn.Module, layers: list[tuple[nn.Module, str]], images: torch.Tensor,
                     targets: torch.Tensor | None) -> list[BatchAttribution]:
    """`attribute_batch` at several layers (module, positions) in one forward and one backward pass: the
    gradient of the summed target logits with respect to every layer's output at once."""
    modules = [module for module, _ in layers]
    # The blocks between two layers need gradients; alone, a later layer's blocks before it would not. PyTorch takes
    # nn.MultiheadAttention's fused kernel only without gradients, so with attention between the layers a later
    # layer's rows differ from its own ingest's within float rounding (docs/ingest.md); elsewhere they are equal.
    # record_function: named ranges for torch.profiler (bench/ingest_profile.py); no cost without a profiler
    with torch.enable_grad(), exact_math(), layers_probe(modules) as seen:
        with record_function("ingest.forward"):
            logits = model(images)
        for record in seen:
            if "output" not in record:
                raise RuntimeError("a layer of interest did not run in the model's forward pass")
            if record["calls"] > 1:
                raise RuntimeError(f"a layer of interest ran {record['calls']} times in one forward pass")
        if targets is None:
            targets = logits.detach().argmax(1)
        with record_function("ingest.backward"):
            target_logits = logits.gather(1, targets.view(-1, 1)).sum()
            grads = torch.autograd.grad(target_logits, [record["output"] for record in seen], allow_unused=True)
    results = []
    with record_function("ingest.attribution_and_input_sums"):
        for (module, positions), record, grad in zip(layers, seen, grads, strict=True):
            activation = record["output"].detach()
            # a layer the target logits do not depend on gets no gradient: its attributions are 0
            product = activation * grad if grad is not None else torch.zeros_like(activation)
            results.append(BatchAttribution(unit_sums(product, module, positions),
                                            layer_input_sums(record["input"], module, positions), logits.detach(),
                                            position_count(activation, module, positions), targets))
    return results
