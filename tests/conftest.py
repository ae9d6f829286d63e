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
