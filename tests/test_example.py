"""The built-in example: its WordNet ids name the right nouns, its model and transform fit together."""

import numpy as np
import torch
from PIL import Image
from torch import nn

from examples import fashion_mnist
from polysem.method.wordnet import load_wordnet, synset

EXPECTED_LEMMA = {
    "tshirt_top": "T-shirt", "trouser": "trouser", "pullover": "pullover", "dress": "dress", "coat": "coat",
    "sandal": "sandal", "shirt": "shirt", "sneaker": "sneaker", "bag": "bag", "ankle_boot": "boot",
}


def test_wnids_are_the_wordnet_nouns_of_the_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYSEM_CACHE", str(tmp_path))
    import nltk

    before = list(nltk.data.path)
    with load_wordnet("/usr/share/wordnet") as wordnet:
        assert list(fashion_mnist.CLASSES) == list(EXPECTED_LEMMA)
        for folder, (_, wnid) in fashion_mnist.CLASSES.items():
            assert EXPECTED_LEMMA[folder] in synset(wordnet, wnid).lemma_names(), (folder, wnid)
    assert nltk.data.path == before  # no lasting side effect


def test_model_has_a_narrow_layer_and_takes_the_transformed_images():
    model = fashion_mnist.model().eval()
    assert isinstance(model.narrow, nn.Conv2d) and model.narrow.out_channels < 10 and model.narrow.kernel_size == (1, 1)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), mode="L").convert("RGB")
    image = fashion_mnist.transform(picture)
    assert image.shape == (1, 28, 28)
    with torch.no_grad():
        assert model(image.unsqueeze(0)).shape == (1, 10)


def test_balanced_indices_take_the_first_images_of_each_class():
    labels = torch.tensor([3, 1, 3, 0, 1, 3, 2, 0, 2] + list(range(4, 10)) * 2)
    chosen = fashion_mnist.balanced_indices(labels, 2)
    assert [int(labels[i]) for i in chosen].count(3) == 2 and chosen[:4] == [0, 1, 2, 3]
    assert len(chosen) == 20


def test_the_vit_example_runs_its_whole_study_at_a_tiny_size(tmp_path):
    """examples/fashion_vit.py at 20 train images per class and one epoch: both splits ingested at both blocks'
    MLP Linear in one store (summed over the 17 tokens), a polysemantic unit of the last split with the logits
    kept, verified, the report."""
    import polysem
    from examples import fashion_vit

    found = fashion_vit.study(tmp_path, fashion_vit.prepare(tmp_path, 20, 4, 1), verify_limit=20, visualize_steps=4)
    store = polysem.Store(tmp_path / "store")
    counts = store.sql("SELECT layer, split, count(*) AS n, min(positions) AS t FROM samples GROUP BY ALL ORDER BY ALL")
    assert counts.to_pylist() == [{"layer": layer, "split": split, "n": n, "t": 17}
                                  for layer in (fashion_vit.FIRST_BLOCK, fashion_vit.LAYER)
                                  for split, n in (("train", 200), ("val", 40))]
    layers = store.meta(any_layer=True)["layers"]
    assert list(layers) == [fashion_vit.FIRST_BLOCK, fashion_vit.LAYER]
    assert all(shape["kind"] == "linear" for shape in layers.values())
    assert found["run"] is not None and found["run"].layer == fashion_vit.LAYER
    run = found["run"]
    assert run is not None and run.max_logit_diff < 1e-4
    assert found["verification"].n_images > 0 and (tmp_path / "report" / "index.html").is_file()
    net = fashion_vit.model()
    net.load_state_dict(torch.load(tmp_path / "fashion_vit.pt"))
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(polysem.load_model(store, run.run_id)(images), net.eval()(images), atol=1e-5, rtol=0)
    measured = fashion_vit.layernorm_bias(tmp_path)  # docs/method.md's measurement, on this store
    assert len(measured["bias_share"]) == 10 and all(0 < share < 1 for share in measured["bias_share"])
