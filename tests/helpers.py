"""What the tests share: image makers, CLI assertions, and the fixture stores.

Each fixture store has one builder here (`BUILDERS`). A store is built once per test run, by whichever
pytest-xdist worker asks first (the others wait on a file lock), into a cache folder the run's workers
share; every test gets its own copy (`StoreCache.copy`), so a test may change its store freely. The images
a store was ingested from stay in the cache and are shared: tests read them, never change them.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

TINY = ["--model", "tests.models:tiny_net", "--layer", "probe", "--transform", "tests.models:small"]

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
PAIR_COLOURS = {"blue": (0, 0, 255), "darkred": (128, 0, 0), "red": (255, 0, 0)}
COLOUR = ["--model", "tests.models:colour_net", "--layer", "probe", "--transform", "tests.models:to_tensor"]
# Any real WordNet nouns will do; the test compares against nltk directly.
COLOUR_WNIDS = {"blue": "n01440764", "green": "n04254680", "red": "n02123045"}  # tench, soccer ball, tabby


# -- images ---------------------------------------------------------------------------------------

def make_image_folder(root: Path, split: str, counts: dict[str, int], size=(20, 20), seed=0) -> Path:
    """Random RGB PNGs: root/split/<class>/<i>.png with `counts[class]` images each."""
    rng = np.random.default_rng(seed)
    for folder, count in counts.items():
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / folder / f"{i:03d}.png")
    return root


def jpeg_pixels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """height x width x 3 uint8: a smooth random colour field with grain, like a photograph to a JPEG decoder."""
    base = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)


def make_jpeg_folder(root: Path, split: str, counts: dict[str, int], sizes=((300, 220),), seed=0) -> Path:
    """JPEGs (quality 90): root/split/<class>/<i>.jpg, the (width, height) of each taken in turn from `sizes`."""
    rng = np.random.default_rng(seed)
    n = 0
    for folder, count in counts.items():
        (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = sizes[n % len(sizes)]
            Image.fromarray(jpeg_pixels(rng, width, height)).save(root / split / folder / f"{i:03d}.jpg", quality=90)
            n += 1
    return root


def map_logits(root: Path, split: str = "train") -> Path:
    """classes.json giving class folder i the logit i: for folders fewer than the model's outputs."""
    folders = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    (root / "classes.json").write_text(json.dumps({f: {"logit": i} for i, f in enumerate(folders)}))
    return root


def make_colour_images(root: Path, split: str, per_class: int, seed=0, size=8, noise=12, colours=None) -> Path:
    """Solid-colour PNGs with a little noise, one class folder per colour, plus classes.json with wnids
    (for the default colours)."""
    rng = np.random.default_rng(seed)
    for name, rgb in (colours or COLOURS).items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.integers(0, noise, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
    if colours is None:
        (root / "classes.json").write_text(json.dumps({k: {"wnid": v} for k, v in COLOUR_WNIDS.items()}))
    return root


# -- assertions -----------------------------------------------------------------------------------

def assert_refused(result, *fragments):
    """Exit 2 with exactly one line, `Error: ...`, holding every fragment."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_refused_last_line(result, *fragments):
    """Like assert_refused, after progress lines on stderr."""
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(f in last for f in fragments), last


def snapshot(path):
    """Every file under `path` with its SHA-256 (lock files excluded: they hold no data)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


# -- fixture stores -------------------------------------------------------------------------------

class Built(NamedTuple):
    """A test's own copy of a fixture store, the (shared, read-only) images it was ingested from, and what
    its builder recorded (e.g. a run id)."""

    store: Path
    images: Path | None
    info: dict


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StoreCache:
    """Fixture stores and image folders, each built once per test run under `root` (shared by the workers)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        """The built folder `name` (BUILDERS[name]): built now by this process, or already by another."""
        base = self.root / name
        done = base / ".built.json"
        if not done.exists():
            with _locked(self.root / f"{name}.lock"):
                if not done.exists():  # a failed build is thrown away and tried again
                    shutil.rmtree(base, ignore_errors=True)
                    base.mkdir()
                    info = BUILDERS[name](self, base) or {}
                    done.write_text(json.dumps(info))
        return base

    def info(self, name: str) -> dict:
        return json.loads((self.folder(name) / ".built.json").read_text())

    def copy(self, name: str, dest: Path) -> Built:
        """A copy of fixture store `name` at `dest`, for one test."""
        base = self.folder(name)
        shutil.copytree(base / "store", dest)
        info = self.info(name)
        return Built(dest, Path(info["images"]) if "images" in info else None, info)


# builders: build(cache, base) writes base/store or base/images and returns the info to record


def _images(make: Callable[[Path], None]):
    """An image folder (base/images) on its own, for stores to be ingested from."""
    def build(cache: StoreCache, base: Path) -> dict:
        make(base / "images")
        return {"images": str(base / "images")}
    return build


def _colour_images(per_class: tuple[int, ...], noise: int = 12, colours=None):
    """Colour images: train (seed 0) and, given a second count, val (seed 1)."""
    def make(base: Path) -> None:
        for split, count, seed in zip(("train", "val"), per_class, (0, 1)):
            make_colour_images(base, split, count, seed=seed, noise=noise, colours=colours)
    return _images(make)


def _ingested(images: str, model: str, splits=("train", "val"), then=None):
    """A store of tests.models:<model> at layer `probe`, ingested (library call) from the image folder `images`;
    `then(store)` adds to it (e.g. a run) and returns what to record."""
    def build(cache: StoreCache, base: Path) -> dict:
        from polysem.ingest import ingest

        root = Path(cache.info(images)["images"])
        for split in splits:
            ingest(base / "store", root, split, model=f"tests.models:{model}", layer="probe",
                   transform="tests.models:to_tensor", progress=False)
        return {"images": str(root), **(then(base / "store") if then else {})}
    return build


def _cli_ingested(images: str, *runs: list):
    """A store ingested by `polysem ingest` (in-process, from the repository root), one command per
    argument list (the store and data folder are added)."""
    def build(cache: StoreCache, base: Path) -> dict:
        from typer.testing import CliRunner

        from polysem.cli import app

        root = Path(cache.info(images)["images"])
        with contextlib.chdir(ROOT):
            for args in runs:
                result = CliRunner().invoke(app, ["ingest", str(root), "--store", str(base / "store"),
                                                  *map(str, args)])
                assert result.exit_code == 0, result.output
        return {"images": str(root)}
    return build


def _opponent_run(store: Path) -> dict:
    """A run splitting OpponentColourNet's channel 0 = R + G into green / red."""
    from polysem.method.runs import disentangle

    run = disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    assert (run.sources1, run.sources2) == ([1], [0])  # G detector / R detector
    return {"run_id": run.run_id}


def _resnet50(cache: StoreCache, base: Path) -> dict:
    """Random-weight ResNet-50 at its default layer, 8 images of 3 classes mapped to logits 0-2."""
    from polysem.ingest import ingest

    root = make_image_folder(base / "images", "train", {"a": 3, "b": 3, "c": 2}, size=(64, 64))
    (root / "classes.json").write_text('{"a": {"logit": 0}, "b": {"logit": 1}, "c": {"logit": 2}}')
    ingest(base / "store", root, model="resnet50", weights="random", transform="tests.models:resnet_small",
           batch_size=8, progress=False)
    return {"images": str(root)}


BUILDERS: dict[str, Callable[[StoreCache, Path], dict]] = {
    # image folders
    "colour-images": _colour_images((6, 4)),
    "colour-images-train-3": _colour_images((3,)),
    "colour-images-quiet": _colour_images((6, 4), noise=6),
    "pair-colour-images-quiet": _colour_images((6, 4), noise=6, colours=PAIR_COLOURS),
    "tiny-images-abc": _images(lambda b: (make_image_folder(b, "train", {"a": 5, "b": 5, "c": 5}, seed=3),
                                          make_image_folder(b, "val", {"a": 3, "b": 3, "c": 3}, seed=4))),
    "tiny-images-abc-8": _images(lambda b: make_image_folder(b, "train", {"a": 8, "b": 8, "c": 8}, seed=3)),
    "tiny-images-ab-mapped": _images(lambda b: map_logits(make_image_folder(b, "train", {"a": 4, "b": 4}))),
    # ColourNet and its variants (tests.models), train and val unless said
    "colour": _ingested("colour-images", "colour_net"),
    "colour-train-3": _ingested("colour-images-train-3", "colour_net", ("train",)),
    "blind-colour-train": _ingested("colour-images", "blind_colour_net", ("train",)),
    "clean-colour-train": _ingested("colour-images", "clean_colour_net", ("train",)),
    "bias-colour": _ingested("colour-images", "bias_colour_net"),
    "tri-colour": _ingested("colour-images-quiet", "tri_colour_net"),
    "pair-colour": _ingested("pair-colour-images-quiet", "pair_colour_net"),
    "opponent-colour-run": _ingested("colour-images", "opponent_colour_net", then=_opponent_run),
    "dark-opponent-run": _ingested("colour-images", "dark_opponent_net", ("train",), then=_opponent_run),
    # TinyNet through the CLI
    "tiny": _cli_ingested("tiny-images-abc", ["--split", "train", *TINY], ["--split", "val", *TINY]),
    "tiny-train-8": _cli_ingested("tiny-images-abc-8", [*TINY, "--batch-size", 5]),
    "tiny-two-classes": _cli_ingested("tiny-images-ab-mapped", [*TINY]),
    "resnet50": _resnet50,
}


# -- processes ------------------------------------------------------------------------------------

def forget_prepared(monkeypatch) -> None:
    """This process's prepared catalog copies, open snapshots, template catalog and checked catalog states forgotten
    for the test: the next read of any store makes its catalog copy anew, the next template is defined anew, and
    the next write lists the catalog's objects."""
    from polysem.query import store as store_module

    monkeypatch.setattr(store_module, "_PREPARED", {})
    monkeypatch.setattr(store_module, "_OPEN", store_module.OrderedDict())
    monkeypatch.setattr(store_module, "_TEMPLATE", [])
    monkeypatch.setattr(store_module, "_CLEAN_CATALOGS", set())


def kill_when_parts(run, folder: Path, count: int = 2, timeout: float = 60) -> None:
    """SIGKILL the process `run` once `folder` holds `count` Parquet parts (or after `timeout` s): a kill
    in the middle of an ingest, with some parts written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list(folder.rglob("*.parquet"))) < count:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_the_query_runs(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the process `proc` (`polysem sql`, or a script calling Store.sql) runs its query: its reading
    connection is open (the catalog copy it reads is unlinked as soon as it is open, so the copy shows as deleted
    among its files), and it has used 0.2 s of CPU since, which only the query takes (what the command does
    between the two takes milliseconds)."""
    deadline, opened_at = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if opened_at is None:
            links = []
            for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
                with contextlib.suppress(OSError):  # closed meanwhile
                    links.append(os.readlink(fd))
            if any("polysem-catalog-" in link and link.endswith("(deleted)") for link in links):
                opened_at = cpu_seconds(proc.pid)
        elif cpu_seconds(proc.pid) - opened_at >= 0.2:
            return
        time.sleep(0.02)
    raise AssertionError(f"the query did not start within {timeout} s")
