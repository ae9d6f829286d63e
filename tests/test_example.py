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
