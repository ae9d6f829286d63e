"""Disentangling a Linear applied per token or position (docs/method.md, "Linear units over tokens or positions"):
the split keeps the outputs (the merge before the GELU; after it, it would not), Eq. 6 over positions equals a
loop over them, the signed-inputs rule, and the readouts that sum over the positions that count. Modules are
built here directly; no store."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from polysem.constants import RHO_GRID
from polysem.errors import RunError
from polysem.method.disentangling import (
    DisentangledConv,
    DisentangledLinear,
    SourceSplit,
    disentangled_layer,
    positive_only,
    replace_module,
    rho_scores,
    split_sources,
)
from polysem.method.runs import LOGIT_TOLERANCE, layer_from_artifact

D, HIDDEN, TOKENS, CLASSES = 8, 16, 6, 5


class Block(nn.Module):
    """A transformer block on N x T x D tokens: x + fc2(GELU(fc1(LayerNorm(x)))), then a linear head on the
    class token (the first) or on the mean of the tokens."""

    def __init__(self, pool: str):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, HIDDEN)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(HIDDEN, D)
        self.head = nn.Linear(D, CLASSES)
        with torch.no_grad():  # LayerNorm starts as the identity affine map: random values make its bias count
            self.norm.weight.normal_(1.0, 0.3)
            self.norm.bias.normal_(0.0, 0.3)

    def forward(self, x):
        x = x + self.fc2(self.act(self.fc1(self.norm(x))))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))


def random_split(generator: torch.Generator, inputs: int, k: int) -> SourceSplit:
    """Each input to one of k concepts or shared, at random (every concept gets at least one)."""
    owner = torch.randint(-1, k, (inputs,), generator=generator)
    owner[:k] = torch.arange(k)
    return SourceSplit(tuple(tuple(torch.nonzero(owner == j).flatten().tolist()) for j in range(k)),
                       tuple(torch.nonzero(owner < 0).flatten().tolist()))


def limit(logits: torch.Tensor) -> float:
    """The logit check's tolerance (`check_equivalence`)."""
    return LOGIT_TOLERANCE * max(1.0, float(logits.abs().max()))


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_split_fc1_keeps_the_logits_and_a_merge_after_the_gelu_would_not(pool, seed):
    torch.manual_seed(seed)
    model = Block(pool).eval()
    generator = torch.Generator().manual_seed(seed)
    channels = torch.randperm(HIDDEN, generator=generator)[:2].tolist()
    splits = [random_split(generator, D, k) for k in (2, 3)]
    x = torch.randn(4, TOKENS, D)
    with torch.no_grad():
        before = model(x)
        new = DisentangledLinear(model.fc1, channels, splits)
        assert new.expanded.out_features == HIDDEN + 2 + 3 and new.merge.bias is None
        exact = Block(pool).eval()
        exact.load_state_dict(model.state_dict())
        replace_module(exact, "fc1", new)
        after = exact(x)
        # the same units with the merge after the GELU: each unit passes its own GELU, then fc2 mixes them
        late = Block(pool).eval()
        late.load_state_dict(model.state_dict())
        late.fc1, late.act = new.expanded, nn.Sequential(nn.GELU(), new.merge)
        wrong = late(x)
    assert float((after - before).abs().max()) <= limit(before)
    assert float((wrong - before).abs().max()) > 10 * limit(before)


def test_the_rows_of_the_new_units_and_the_bias():
    """c'_1 keeps index c, c'_2 and r follow C_l; the bias goes to each; merge is c'_1 + c'_2 - r."""
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    split = SourceSplit(((0,), (2, 3)), (1,))
    new = DisentangledLinear(linear, [1], [split])
    w = linear.weight.detach()[1]
    assert new.units == {1: {"c1": 1, "c2": 3, "r": 4}}
    torch.testing.assert_close(new.expanded.weight[1], w * torch.tensor([1.0, 1, 0, 0]))
    torch.testing.assert_close(new.expanded.weight[3], w * torch.tensor([0.0, 1, 1, 1]))
    torch.testing.assert_close(new.expanded.weight[4], w * torch.tensor([0.0, 1, 0, 0]))
    torch.testing.assert_close(new.expanded.bias[[1, 3, 4]], linear.bias.detach()[[1, 1, 1]])
    torch.testing.assert_close(new.merge.weight, torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 0, 1, -1], [0, 0, 1, 0, 0]]))


def test_a_convnext_block_over_channels_last_positions_splits_exactly():
    """torchvision's CNBlock: depthwise conv, then LayerNorm -> Linear -> GELU -> Linear on N x H x W x D."""
    from torchvision.models.convnext import CNBlock

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, D, 2, stride=2), CNBlock(D, layer_scale=1.0, stochastic_depth_prob=0.0),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(D, CLASSES)).eval()
    linear = model[1].block[3]
    assert isinstance(linear, nn.Linear)
    generator = torch.Generator().manual_seed(3)
    new = disentangled_layer(linear, [5, 17], [random_split(generator, D, 2), random_split(generator, D, 4)])
    assert isinstance(new, DisentangledLinear)
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
        replace_module(model, "1.block.3", new)
        after = model(x)
    assert float((after - before).abs().max()) <= limit(before)


def brute_force_eq6(maps, linear, channel, arvs, objective, positions):
    """Per rho: each image's positions one at a time through a freshly built DisentangledLinear, with the
    signed-inputs split; the positions that count are all tokens, the first (cls) or the rest (patch)."""
    tokens = {"all": slice(None), "cls": slice(0, 1), "patch": slice(1, None)}[positions]
    scores = []
    for rho in RHO_GRID:
        split = split_sources(arvs, rho, positive_only=True)
        if not all(split.sources):
            scores.append(None)
            continue
        layer = DisentangledLinear(linear, [channel], [split]).double()
        index = [layer.unit_index(channel, f"c{j + 1}") for j in range(split.k)]
        total = 0.0
        for j, concept_maps in enumerate(maps):
            ratios = []
            for image in concept_maps:
                s = torch.zeros(split.k, dtype=torch.float64)
                for position in torch.from_numpy(image)[tokens]:
                    out = layer.expanded(position)[index]
                    s += out.abs() if objective == "abs" else out.clamp(min=0)
                other = s.sum() - s[j] + (1e-5 if objective == "positive" else 0.0)
                ratios.append(float(s[j] / other))
            total += np.mean(ratios)
        scores.append(total)
    return scores


@pytest.mark.parametrize("objective", ["abs", "positive"])
@pytest.mark.parametrize("positions", ["all", "cls", "patch"])
def test_rho_scores_of_a_linear_equal_a_loop_over_positions(objective, positions):
    torch.manual_seed(7)
    linear = nn.Linear(6, 4).double()
    rng = np.random.default_rng(7)
    maps = [rng.normal(size=(3, 5, 6)), rng.normal(size=(4, 5, 6))]  # signed, as after a LayerNorm
    arvs = [np.array([2.0, -1, 0.5, -3, 1.5, 0.2]), np.array([-1.0, 2, 0.4, -0.5, 1.4, -2])]
    scores = rho_scores(maps, linear, 2, arvs, objective, positions=positions)
    expected = brute_force_eq6(maps, linear, 2, arvs, objective, positions)
    assert [row["skipped"] is None for row in scores] == [e is not None for e in expected]
    assert any(e is not None for e in expected)
    np.testing.assert_allclose([row["objective_value"] for row in scores if row["skipped"] is None],
                               [e for e in expected if e is not None], rtol=1e-10)


def test_signed_inputs_go_to_a_concept_only_when_they_raise_its_arv():
    # both negative: Ineq. 5 gives input 0 to concept 1 (-0.5 > -5), which it lowers; the Linear rule shares it
    both_negative = [np.array([-1.0]), np.array([-5.0])]
    assert split_sources(both_negative, 0.5) == SourceSplit(((0,), ()), ())
    assert split_sources(both_negative, 0.5, positive_only=True) == SourceSplit(((), ()), (0,))
    # opposite signs: the positive one wins under both rules
    opposite = [np.array([2.0, -2.0]), np.array([-3.0, 3.0])]
    for rule in (False, True):
        assert split_sources(opposite, 0.5, positive_only=rule) == SourceSplit(((0,), (1,)), ())
    # inputs >= 0 and a positive weight (post-ReLU into a conv's channel): the two rules agree at every rho
    rng = np.random.default_rng(0)
    arvs = rng.uniform(0, 1, size=(3, 50)) * (rng.uniform(size=(3, 50)) > 0.2)
    for rho in RHO_GRID:
        assert split_sources(arvs, rho, positive_only=True) == split_sources(arvs, rho)


def test_only_a_linear_takes_the_signed_rule_and_a_conv_run_keeps_the_paper_s():
    assert positive_only(nn.Linear(2, 2)) and not positive_only(nn.Conv2d(1, 2, 1))
    # a conv with both ARV entries negative: its rho search splits by Ineq. 5 as it is (input 1 to concept 1)
    conv = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    maps = [np.ones((1, 2, 2, 2)), np.ones((1, 2, 2, 2))]
    arvs = [np.array([1.0, -1.0]), np.array([0.1, -5.0])]
    scores = rho_scores(maps, conv, 0, arvs, grid=(0.5,))
    assert scores[0]["n_sources"] == [2, 0]
    assert split_sources(arvs, 0.5) == SourceSplit(((0, 1), ()), ())


def test_a_saved_linear_layer_comes_back_and_a_conv_artifact_is_refused():
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    split = SourceSplit(((0,), (2, 3)), (1,))
    new = DisentangledLinear(linear, [1], [split])
    buffer = io.BytesIO()
    torch.save({"layer": "fc1", "kind": "linear", "channels": [1], "units": new.units,
                "state_dict": new.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    back = layer_from_artifact(linear, saved, {1: split}, "abc")
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(back(x), linear(x))
    torch.testing.assert_close(back.expanded(x), new.expanded(x))
    with pytest.raises(RunError, match="holds a split Conv2d, but the store's layer is a Linear"):
        layer_from_artifact(linear, {k: v for k, v in saved.items() if k != "kind"}, {1: split}, "abc")
    conv = nn.Conv2d(4, 3, 1)
    with pytest.raises(RunError, match="holds a split Linear, but the store's layer is a Conv2d"):
        layer_from_artifact(conv, saved, {1: split}, "abc")
    assert isinstance(disentangled_layer(conv, [1], [split]), DisentangledConv)


def test_clamped_attributions_are_clamped_per_position_and_summed_over_the_positions_that_count():
    from polysem.method.evaluation import clamped_attribution_sums

    torch.manual_seed(1)
    model = Block("mean").eval()
    x = torch.randn(3, TOKENS, D)
    targets = torch.tensor([0, 2, 4])
    seen = {}
    handle = model.fc1.register_forward_hook(lambda m, i, o: seen.update(z=o))
    logits = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), seen["z"])
    per_position = (seen["z"] * grad).detach().clamp(min=0)  # N x T x HIDDEN
    torch.testing.assert_close(clamped_attribution_sums(model, model.fc1, x, targets, "patch"),
                               per_position[:, 1:].sum(1))
    torch.testing.assert_close(clamped_attribution_sums(model, model.fc1, x, targets), per_position.sum(1))


def test_the_visualisation_readout_takes_units_from_the_last_axis():
    from polysem.method.visualize import Target, _forward, channel_target, run_target

    torch.manual_seed(2)
    model = Block("cls").eval()
    x = torch.randn(2, TOKENS, D)
    with torch.no_grad():
        z = model.fc1(model.norm(x))  # N x T x HIDDEN
        target = channel_target(model, "fc1", 5, "patch")
        torch.testing.assert_close(target.readout(z), z[:, 1:, 5][:, None])
        replace_module(model, "fc1", DisentangledLinear(model.fc1, [5], [SourceSplit(((0, 1), (2,)), (3, 4, 5, 6, 7))]))
        split = run_target(model, "fc1", 5, positions="cls")
        out = _forward(split, x)
        maps = split.readout(out)
    assert split.units == ("original", "c1", "c2", "r") and maps.shape == (2, 4, 1)
    torch.testing.assert_close(maps[:, 0, 0], z[:, 0, 5], rtol=1e-5, atol=1e-6)  # merge's sum: the original unit
    torch.testing.assert_close(maps[:, 1:, 0], out[:, 0, [5, HIDDEN, HIDDEN + 1]])

    class SizeAsserting(nn.Module):  # torchvision's ViT asserts its image size
        def forward(self, images):
            assert images.shape[-1] == 16, "Wrong image width!"
            return images

    asserting = SizeAsserting()
    with pytest.raises(RunError, match="choose a `size` the model accepts"):
        _forward(Target(asserting, asserting, ("original",), lambda out: out, 0), torch.zeros(1, 3, 8, 8))


def test_a_linear_unit_has_no_receptive_field_box_and_its_caption_says_so():
    from polysem.figures.plots import selection_caption
    from polysem.method.features import cached_class_maps
    from polysem.method.receptive_field import receptive_fields

    with pytest.raises(RunError, match="no receptive-field box"):
        receptive_fields(Block("cls"), Block("cls").fc1, (TOKENS, D), [(0, 0)])
    facts = {"split": "val", "classes": {1: ["a"], 2: ["b"]}, "top": 16, "n_images": 4, "shown": 2,
             "photo_note": "photos as files", "whole_field": True, "no_field": True}
    caption = selection_caption(facts, "encoder.layers.encoder_layer_1.mlp.0")
    assert "Patches: the whole image (layer encoder.layers.encoder_layer_1.mlp.0 is a Linear over tokens" in caption
    assert "receptive field of every" not in caption
    # the feature cache is a folder per layer: a name that is not one folder name is refused, not joined
    with pytest.raises(RunError, match="cannot name a cache folder"):
        cached_class_maps(None, nn.Identity(), "/etc", layer=nn.Linear(1, 1), transform=None, class_id=0,
                          split="train", run=None)
