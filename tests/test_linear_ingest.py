"""Linear layers applied per token or position: a ViT's MLP and a ConvNeXt block's, ingested and checked
against plain autograd on one image at a time; the layers and models polysem cannot take are refused in one
line before anything is written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import polysem
from polysem.query import Store
from tests import models
from tests.helpers import assert_refused, make_image_folder, snapshot

VIT_MLP = "encoder.layers.encoder_layer_{}.mlp.0"
CONVNEXT_MLP = "features.{}.0.block.3"  # features.1 and features.3 are the two stages' blocks


def brute_force(model, layer_name: str, path: str, logit: int, tokens=slice(None)):
    """Attribution and input sums of one image at a Linear by whole-model autograd: the output z and input u
    over the chosen tokens (dim 1), summed over every position axis."""
    layer = dict(model.named_modules())[layer_name]
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(u=i[0], z=o))
    try:
        image = models.small(Image.open(path).convert("RGB")).unsqueeze(0).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(image)[0, logit], seen["z"])
    finally:
        handle.remove()
    z, g, u = seen["z"][:, tokens], grad[:, tokens], seen["u"][:, tokens]
    axes = tuple(range(1, z.dim() - 1))
    return ((z * g).sum(axes)[0].detach().numpy(), u.sum(axes)[0].detach().numpy(),
            int(np.prod(z.shape[1:-1])))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear") / "data"
    make_image_folder(root, "train", {"a": 2, "b": 2, "c": 2}, seed=3)
    return root


def ingested(store, images, model: str, layer: str, positions=None) -> list[dict]:
    polysem.ingest(store, images, model=f"tests.models:{model}", layer=layer, transform="tests.models:small",
                   positions=positions, progress=False)
    return Store(store).sql("SELECT s.path, c.logit, s.attribution, s.input_sum, s.positions FROM samples s "
                            "JOIN classes c ON c.class_id = s.target ORDER BY s.image_id").to_pylist()


@pytest.mark.parametrize(("model", "layer", "positions", "tokens", "count"), [
    ("tiny_vit", VIT_MLP.format(0), None, slice(None), 17),
    ("tiny_vit", VIT_MLP.format(1), "cls", slice(0, 1), 1),
    ("tiny_vit", VIT_MLP.format(0), "patch", slice(1, None), 16),
    ("tiny_convnext", CONVNEXT_MLP.format(1), None, slice(None), 16),
    ("tiny_convnext", CONVNEXT_MLP.format(3), None, slice(None), 4),
])
def test_linear_units_match_autograd(tmp_path, images, model, layer, positions, tokens, count):
    rows = ingested(tmp_path / "store", images, model, layer, positions)
    net = getattr(models, model)().eval()
    assert len(rows) == 6
    for row in rows:
        attribution, input_sum, positions_counted = brute_force(net, layer, row["path"], row["logit"], tokens)
        assert np.abs(attribution).max() > 0  # the head is random: a unit that matters
        np.testing.assert_allclose(row["attribution"], attribution, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(row["input_sum"], input_sum, rtol=1e-4, atol=1e-5)
        assert row["positions"] == positions_counted == count
    meta = Store(tmp_path / "store").meta()
    assert meta["layer_shape"]["kind"] == "linear" and meta["layer_shape"]["positions"] == (positions or "all")
    weights = Store(tmp_path / "store").sql("SELECT weight FROM layer_weights ORDER BY channel").column(0).to_pylist()
    np.testing.assert_array_equal(np.array(weights), dict(net.named_modules())[layer].weight.detach().numpy())


def test_the_last_vit_block_gives_patch_tokens_no_attribution(tmp_path, images):
    """torchvision's ViT classifies from the class token: in its last block the patch tokens get no gradient."""
    rows = ingested(tmp_path / "store", images, "tiny_vit", VIT_MLP.format(1), "patch")
    assert all(not any(row["attribution"]) for row in rows)


def test_one_choice_of_positions_per_store(cli, tmp_path, images):
    store = tmp_path / "store"
    ingested(store, images, "tiny_vit", VIT_MLP.format(0), "cls")
    before = snapshot(store)
    assert_refused(cli("ingest", images, "--store", store, "--positions", "patch"),
                   "--positions cls", "not patch")
    assert snapshot(store) == before


@pytest.mark.parametrize(("model", "layer", "options", "fragments"), [
    ("tiny_vit", "heads.head", [], ("heads.head", "no token or position axis")),
    ("tiny_vit", "encoder.layers.encoder_layer_0.self_attention.out_proj", [], ("never runs",)),
    ("tiny_vit", "encoder.ln", [], ("LayerNorm", "neither a Conv2d nor a Linear")),
    ("twice_linear_net", "shared", [], ("runs 2 times",)),
    ("sequence_first_net", "fc", [], ("sequence-first", "batch on dim 0")),
    ("tiny_convnext", CONVNEXT_MLP.format(1), ["--positions", "cls"], ("one token axis",)),
    ("tiny_net", "probe", ["--positions", "cls"], ("Conv2d", "omit --positions")),
    ("tiny_vit", VIT_MLP.format(0), ["--positions", "first"], ("--positions must be one of all, cls, patch",)),
    ("tiny_vit", VIT_MLP.format(0), ["--layer", VIT_MLP.format(0)], ("named once each", "twice")),
])
def test_layers_polysem_cannot_take_are_refused_before_anything_is_written(cli, tmp_path, images, model, layer,
                                                                            options, fragments):
    store = tmp_path / "store"
    result = cli("ingest", images, "--store", store, "--model", f"tests.models:{model}", "--layer", layer,
                 "--transform", "tests.models:small", *options)
    assert_refused(result, *fragments)
    assert not store.exists()


def test_layers_lists_linear_units_and_says_which_it_cannot_take(cli):
    result = cli("layers", "--model", "tests.models:tiny_vit", "--size", "16", "--format", "json")
    assert result.exit_code == 0, result.output

    rows = {row["layer"]: row for row in json.loads(result.output)}
    assert rows[VIT_MLP.format(0)]["takes"] and rows[VIT_MLP.format(0)]["type"] == "Linear"
    assert not rows["heads.head"]["takes"] and "no token or position axis" in rows["heads.head"]["why_not"]
    assert not rows["encoder.layers.encoder_layer_0.self_attention.out_proj"]["takes"]
