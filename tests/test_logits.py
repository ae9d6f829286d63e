"""Each image is attributed to its own class's logit: ImageNet subsets, classes.json, refusals."""

import json

import numpy as np
import pytest
import torch
import torchvision
from polysem.ingest.dataset import class_rows, imagenet_index
from polysem.query import Store

from polysem.errors import DataError
from tests.helpers import TINY, assert_refused, make_image_folder
from tests.models import resnet_small, small, tiny_net

# non-contiguous ImageNet-1k classes; sorted, their folder indices are 0..3, their logits are not
SUBSET = {"n01514668": 7, "n02123045": 281, "n04254680": 805, "n09472597": 980}


def brute_force_attribution(model, layer, image, logit):
    """sum over positions of f_l * d y_logit / d f_l for one image, by plain autograd."""
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        logits = model(image[None])
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, logit], seen["out"])
    return (seen["out"] * grad).sum(dim=(2, 3))[0].detach().numpy(), logits[0].detach()


def test_imagenet_subset_uses_each_images_imagenet_logit(cli, tmp_path, store_path):
    root = make_image_folder(tmp_path / "subset", "train", dict.fromkeys(SUBSET, 2), size=(64, 64))
    result = cli("ingest", root, "--store", store_path, "--model", "resnet18", "--weights", "random:1",
                 "--layer", "layer4.1.conv2", "--transform", "tests.models:resnet_small", "--batch-size", 3)
    assert result.exit_code == 0, result.output
    store = Store(store_path)
    classes = store.sql("SELECT folder, logit FROM classes ORDER BY class_id").to_pylist()
    assert {c["folder"]: c["logit"] for c in classes} == SUBSET
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    layer = model.layer4[1].conv2
    rows = store.sql("SELECT * FROM samples ORDER BY image_id").to_pylist()
    logit_of = [c["logit"] for c in classes]
    from PIL import Image

    for row in rows:
        image = resnet_small(Image.open(row["path"]).convert("RGB"))
        expected, logits = brute_force_attribution(model, layer, image, logit_of[row["target"]])
        np.testing.assert_allclose(row["attribution"], expected, rtol=1e-3, atol=1e-5)
        assert row["target_logit"] == pytest.approx(float(logits[logit_of[row["target"]]]), rel=1e-4, abs=1e-5)
        assert row["predicted_logit"] == int(logits.argmax())
        # the prediction is a class of the store only when the argmax is one of the four logits
        assert row["prediction"] == (logit_of.index(row["predicted_logit"]) if row["predicted_logit"] in logit_of else None)


def test_classes_json_logits_and_prediction_of_no_class(cli, tmp_path, store_path):
    root = make_image_folder(tmp_path / "d", "train", {"a": 3, "b": 3})
    (root / "classes.json").write_text(json.dumps({"a": {"logit": 2}, "b": {"logit": 0}}))
    assert cli("ingest", root, "--store", store_path, *TINY).exit_code == 0
    store = Store(store_path)
    assert store.sql("SELECT logit FROM classes ORDER BY class_id").column("logit").to_pylist() == [2, 0]
    model = tiny_net().eval()
    from PIL import Image

    for row in store.sql("SELECT * FROM samples").to_pylist():
        logit = [2, 0][row["target"]]
        expected, logits = brute_force_attribution(model, model.probe, small(Image.open(row["path"]).convert("RGB")), logit)
        np.testing.assert_allclose(row["attribution"], expected, rtol=1e-4, atol=1e-6)
        assert row["prediction"] == {2: 0, 0: 1}.get(int(logits.argmax()))  # logit 1 belongs to no class


def test_unmappable_classes_are_refused_before_anything_is_written(cli, tmp_path, store_path):
    root = make_image_folder(tmp_path / "d", "train", dict.fromkeys("abcdef", 1), size=(32, 32))
    result = cli("ingest", root, "--store", store_path, "--model", "resnet18", "--weights", "random",
                 "--layer", "layer4.1.conv2", "--transform", "tests.models:resnet_small")
    assert_refused(result, "resnet18 has 1000 outputs", "6 class folders", "are not ImageNet-1k wnids",
                   '"logit"', "classes.json", "use a model with 6 outputs")
    assert not store_path.exists()
    (root / "classes.json").write_text(json.dumps({f: {"logit": i} for i, f in enumerate("abcdef")}))
    tiny = cli("ingest", root, "--store", store_path, *TINY)  # 3 outputs
    assert_refused(tiny, "class 'd' has logit 3", "outputs 0..2")
    (root / "classes.json").write_text(json.dumps({f: {"logit": i % 3} for i, f in enumerate("abcdef")}))
    assert_refused(cli("ingest", root, "--store", store_path, *TINY), "both map to logit 0")
    assert not store_path.exists()


def test_the_full_ordered_imagenet_set_maps_to_the_identity(tmp_path):
    folders = sorted(imagenet_index())
    rows = class_rows(tmp_path, folders, 1000)
    assert [r["logit"] for r in rows] == list(range(1000))
    assert rows[281]["name"] == "tabby cat" and rows[281]["wnid"] == "n02123045"
    # a 10-output model of ten wnid folders (an ImageNet-subset model) uses the folder index
    assert [r["logit"] for r in class_rows(tmp_path, folders[100:110], 10)] == list(range(10))
    with pytest.raises(DataError, match="have no logit"):
        class_rows(tmp_path, folders[:5], 10)
