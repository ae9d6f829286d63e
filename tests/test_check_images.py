"""The disentangle check records the number of images it really checked, over every image size."""

import numpy as np
from PIL import Image

from tests.conftest import COLOUR, make_colour_images


def test_check_images_counts_every_size_group(tmp_path):
    """The green images are 12 px, the others 8 px, and the transform does not resize: the check collates
    two size groups, and the run records the images of both (it recorded the last group's alone)."""
    from polysem.ingest import ingest
    from polysem.method.runs import disentangle

    root = make_colour_images(tmp_path / "colours", "train", 6)
    for path in (root / "train" / "green").glob("*.png"):
        pixels = np.asarray(Image.open(path))
        Image.fromarray(np.resize(pixels, (12, 12, 3))).save(path)
    sizes = {Image.open(path).size for path in (root / "train").glob("*/*.png")}
    assert sizes == {(8, 8), (12, 12)}
    store = tmp_path / "store"
    ingest(store, root, "train", model=COLOUR[1], layer=COLOUR[3], transform=COLOUR[5], progress=False)
    run = disentangle(store, 0, concept1=["green"], concept2=["red"], force=True, progress=False)
    assert run.parameters["check_images"] == 18  # 3 classes x 6 images, all within the check's 32
