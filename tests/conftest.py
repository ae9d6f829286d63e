import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from polysem.cli import app

os.environ.setdefault("POLYSEM_OFFLINE", "1")  # never try to download weights in tests
ROOT = Path(__file__).resolve().parent.parent


def make_image_folder(root: Path, split: str, counts: dict[str, int], size=(20, 20), seed=0) -> Path:
    """Random RGB PNGs: root/split/<class>/<i>.png with `counts[class]` images each."""
    rng = np.random.default_rng(seed)
    for folder, count in counts.items():
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / folder / f"{i:03d}.png")
    return root


def map_logits(root: Path, split: str = "train") -> Path:
    """classes.json giving class folder i the logit i: for folders fewer than the model's outputs."""
    import json

    folders = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    (root / "classes.json").write_text(json.dumps({f: {"logit": i} for i, f in enumerate(folders)}))
    return root


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root, "train", {"cat": 4, "dog": 3, "emu": 3})
    make_image_folder(root, "val", {"cat": 2, "dog": 2, "emu": 2}, seed=1)
    return root


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cli(monkeypatch):
    """Run `polysem ...` in-process from the repository root; returns the click Result."""
    monkeypatch.chdir(ROOT)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


TINY = ["--model", "tests.models:tiny_net", "--layer", "probe", "--transform", "tests.models:small"]


COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
COLOUR = ["--model", "tests.models:colour_net", "--layer", "probe", "--transform", "tests.models:to_tensor"]
# Any real WordNet nouns will do; the test compares against nltk directly.
COLOUR_WNIDS = {"blue": "n01440764", "green": "n04254680", "red": "n02123045"}  # tench, soccer ball, tabby


def make_colour_images(root: Path, split: str, per_class: int, seed=0, size=8, noise=12, colours=None) -> Path:
    """Solid-colour PNGs with a little noise, one class folder per colour, plus classes.json with wnids
    (for the default colours)."""
    import json

    rng = np.random.default_rng(seed)
    for name, rgb in (colours or COLOURS).items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.integers(0, noise, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
    if colours is None:
        (root / "classes.json").write_text(json.dumps({k: {"wnid": v} for k, v in COLOUR_WNIDS.items()}))
    return root


@pytest.fixture
def colour_store(tmp_path):
    """A store of the known-answer ColourNet: train and val splits ingested."""
    from polysem.ingest import ingest

    root = make_colour_images(tmp_path / "colours", "train", 6)
    make_colour_images(root, "val", 4, seed=1)
    store = tmp_path / "colour-store"
    model, layer, transform = COLOUR[1], COLOUR[3], COLOUR[5]
    for split in ("train", "val"):
        ingest(store, root, split, model=model, layer=layer, transform=transform, progress=False)
    return store
