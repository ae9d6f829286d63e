"""Attributions and input window sums against independent per-image autograd computations."""

import numpy as np
import pytest
import torch
import torchvision
from polysem.ingest.attribution import attribute_batch, input_window_sums, layer_probe
from polysem.query import Store
from torch import nn

from tests.helpers import TINY


def brute_force_attribution(model, layer, image, target):
    """One image, full autograd through the whole model, no hook tricks."""
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(output=o))
    try:
        image = image.unsqueeze(0).requires_grad_(True)  # so every layer joins the graph
        logit = model(image)[0, target]
        (grad,) = torch.autograd.grad(logit, seen["output"])
    finally:
        handle.remove()
    return (seen["output"] * grad).sum(dim=(2, 3))[0].detach()


def test_resnet50_attribution_and_input_sum_match_brute_force():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layer = model.layer4[2].conv3
    images = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([3, 500, 999])
    batch = attribute_batch(model, layer, images, targets)
    assert batch.attribution.shape == (3, 2048) and batch.input_sum.shape == (3, 512)
    assert batch.positions == 4
    for n in range(3):
        expected = brute_force_attribution(model, layer, images[n], int(targets[n]))
        torch.testing.assert_close(batch.attribution[n], expected, rtol=1e-4, atol=1e-6)
        with layer_probe(layer, detach_output=False) as seen:
            model(images[n : n + 1])
        torch.testing.assert_close(batch.input_sum[n], seen["input"][0].sum(dim=(1, 2)), rtol=2e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(batch.logits, model(images))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 3, 3, stride=2, padding=1),
        nn.Conv2d(4, 3, (3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
        nn.Conv2d(4, 3, 3, padding="same", dilation=2),
        nn.Conv2d(4, 3, 5, stride=3, padding=2),
    ],
)
def test_window_sums_give_exact_arv_for_any_kernel(conv):
    """W[c] . S(x) equals the gradient x input attribution of f_{l-1} to sum f_l[c] (docs/method.md section 3)."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 11, 9)
    sums = input_window_sums(x, conv)  # N x (in * kh * kw)
    kh, kw = conv.kernel_size
    for n in range(2):
        for c in range(3):
            leaf = x[n : n + 1].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(conv(leaf)[0, c].sum(), leaf)
            brute = (leaf * grad).sum(dim=(2, 3))[0]  # per input channel
            identity = (conv.weight[c].detach().flatten() * sums[n]).view(4, kh * kw).sum(1)
            torch.testing.assert_close(identity, brute.detach(), rtol=1e-4, atol=1e-5)


def test_stored_sums_give_brute_force_arv_for_3x3_strided_conv(cli, data_dir, store_path):
    """ARV from the store's input_sum and layer_weights equals per-image autograd through the layer."""
    from polysem.ingest.dataset import list_split

    from polysem.util.images import ImageRecords
    from tests.models import small, tiny_net

    result = cli("ingest", data_dir, "--store", store_path, *TINY)
    assert result.exit_code == 0, result.output
    store = Store(store_path)
    weights = np.stack(store.sql("SELECT weight FROM layer_weights ORDER BY channel").column("weight").to_pylist())
    net = tiny_net().eval()
    listing = list_split(data_dir, "train")
    images = ImageRecords(listing.records, small)
    for target in (0, 2):
        sums = np.stack(store.sql("SELECT input_sum FROM samples WHERE target = ?", [target]).column("input_sum").to_pylist())
        paths = [r for r in listing.records if r.target == target]
        for channel in (0, 4):
            identity = (weights[channel] * sums.mean(0)).reshape(6, 9).sum(1)
            brute = []
            for record in paths:
                _, image, _ = images[listing.records.index(record)]
                f_prev = net.stem(image.unsqueeze(0)).detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(net.probe(f_prev)[0, channel].sum(), f_prev)
                brute.append((f_prev * grad).sum(dim=(2, 3))[0].detach().numpy())
            np.testing.assert_allclose(identity, np.mean(brute, axis=0), rtol=1e-4, atol=1e-5)


def test_hook_is_removed_after_success_and_after_error():
    from tests.models import tiny_net

    net = tiny_net().eval()
    attribute_batch(net, net.probe, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert not net.probe._forward_hooks
    with pytest.raises(RuntimeError):
        attribute_batch(net, net.probe, torch.randn(2, 5, 16, 16), torch.tensor([0, 1]))  # wrong channel count
    assert not net.probe._forward_hooks
    with pytest.raises(RuntimeError):
        with layer_probe(net.probe):
            raise RuntimeError("boom")
    assert not net.probe._forward_hooks


def test_inplace_op_after_layer_does_not_change_attribution():
    """TinyNet's head starts with ReLU(inplace=True) right after the probed conv."""
    from tests.models import tiny_net

    net = tiny_net().eval()
    images, targets = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    batch = attribute_batch(net, net.probe, images, targets)
    for n in range(3):
        torch.testing.assert_close(batch.attribution[n], brute_force_attribution(net, net.probe, images[n], int(targets[n])))
