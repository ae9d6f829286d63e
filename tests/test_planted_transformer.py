"""A transformer whose MLP unit serves two unrelated classes by construction (tests.models.ColourTransformer):
screening finds that unit alone, the split gives each concept its own unit, verify says resolved, the logits stay;
a unit the construction makes monosemantic is left alone, and splitting it is refused."""

import numpy as np
import pytest
import torch
from PIL import Image

import polysem
from polysem.query import Store
from tests.helpers import make_colour_images
from tests.models import colour_transformer, to_tensor

MODEL = dict(model="tests.models:colour_transformer", layer="block.fc1", transform="tests.models:to_tensor")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    for split, seed in (("train", 0), ("val", 1)):
        make_colour_images(root / "data", split, 6, seed=seed)
        polysem.ingest(root / "store", root / "data", split, progress=False, **MODEL)
    return root / "store"


def test_screening_finds_the_planted_unit_alone(store):
    pairs = polysem.screen(store).to_pylist()
    assert {(row["channel"], row["name1"], row["name2"]) for row in pairs} == {(0, "green", "red")}


def test_the_split_gives_each_concept_its_own_unit_and_keeps_the_logits(store):
    run = polysem.disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    assert (run.sources, run.shared) == ([[1], [0]], [2])  # the G detector, the R detector; B shared
    assert run.max_logit_diff < 1e-5
    verdict = polysem.verify(store, run.run_id, progress=False)
    assert verdict.resolved and [unit.own_classes for unit in verdict.channels] == [[1], [2]]
    evaluation = polysem.evaluate(store, run.run_id)
    green, red = evaluation.per_concept
    assert green.fractions[0] >= 0.9 and red.fractions[1] >= 0.9
    assert green.fractions[1] < 0.1 and red.fractions[0] < 0.1
    # the saved model: the same logits as the planted one on every stored image, unit 0 now two units
    split_model = polysem.load_model(store, run.run_id).eval()
    planted = colour_transformer().eval()
    paths = Store(store).sql("SELECT path FROM samples ORDER BY image_id").column(0).to_pylist()
    images = torch.stack([to_tensor(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        np.testing.assert_allclose(split_model(images).numpy(), planted(images).numpy(), atol=1e-5)
    assert split_model.block["fc1"].expanded.out_features == 3 + 2


def test_a_monosemantic_unit_is_not_split(store):
    from polysem.errors import PolysemError

    with pytest.raises(PolysemError, match="not relevant"):
        polysem.disentangle(store, 1, concept1=["blue"], concept2=["red"], progress=False)
