"""`ingest --target predicted`: each image attributed to the model's argmax logit instead of its label's,
checked against brute-force autograd; recorded in the store, one target per store."""

import numpy as np
import torch
from PIL import Image

import polysem
from polysem.query import Store
from tests.helpers import TINY, assert_refused, make_image_folder, snapshot
from tests.models import small, tiny_net


def brute_force(path: str) -> tuple[np.ndarray, int, float]:
    """The attribution of the argmax logit at tiny_net's probe, by plain autograd on one image."""
    model = tiny_net().eval()
    seen = {}
    handle = model.probe.register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        logits = model(small(Image.open(path).convert("RGB")).unsqueeze(0))
    finally:
        handle.remove()
    k = int(logits.argmax())
    (grad,) = torch.autograd.grad(logits[0, k], seen["out"])
    return (seen["out"] * grad).sum(dim=(2, 3))[0].detach().numpy(), k, float(logits[0, k])


def test_predicted_targets_are_the_argmax_logits_attributions(tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 4, "b": 4, "c": 4}, seed=5)
    store = tmp_path / "s"
    polysem.ingest(store, data, model="tests.models:tiny_net", layer="probe", transform="tests.models:small",
                   target="predicted", progress=False)
    rows = Store(store).sql("SELECT path, target, predicted_logit, target_logit, attribution FROM samples").to_pylist()
    assert len(rows) == 12
    differs = 0
    for row in rows:
        attribution, k, logit = brute_force(row["path"])
        np.testing.assert_allclose(row["attribution"], attribution, rtol=1e-4, atol=1e-6)
        assert row["predicted_logit"] == k and abs(row["target_logit"] - logit) < 1e-5
        differs += k != row["target"]
    assert differs > 0  # some images are attributed to another class than their label's: the option changed them
    assert Store(store).meta()["target"] == "predicted"


def test_one_target_per_store_and_bad_values_refused(cli, tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 2, "b": 2, "c": 2})
    make_image_folder(tmp_path / "data", "val", {"a": 1, "b": 1, "c": 1}, seed=1)
    store = tmp_path / "s"
    assert cli("ingest", data, "--store", store, *TINY, "--target", "predicted").exit_code == 0
    before = snapshot(store)
    assert_refused(cli("ingest", data, "--split", "val", "--store", store, "--target", "label"),
                   "the store holds --target predicted", "one target per store")
    assert_refused(cli("ingest", data, "--split", "val", "--store", store, "--target", "argmax"),
                   "--target must be label", "or predicted", "got 'argmax'")
    assert snapshot(store) == before
    assert cli("ingest", data, "--split", "val", "--store", store).exit_code == 0  # the store's own target
    assert Store(store).meta()["target"] == "predicted"
