"""Among the images: FIFOs, sockets and devices never block, file links stay in their class, and an
image above the pixel limit is listed without being decoded (and without Pillow's warning)."""

import json
import os
import socket
import stat
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageFile

import polysem
from polysem.errors import ArgumentError
from polysem.query import Store
from polysem.util.images import ImageRefused, open_image
from tests import zygote
from tests.helpers import TINY, assert_refused, make_image_folder, snapshot

PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS  # Pillow's default, about 89.5 million


def add_special_files(folder: Path) -> None:
    """A FIFO, a unix socket and a character device (the numbers of /dev/null), named like images.
    Tests run as root: if mknod fails, the test fails."""
    os.mkfifo(folder / "000-fifo.png")
    here = os.getcwd()
    os.chdir(folder)  # a socket path is limited to about 100 bytes: bind by a short relative name
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind("001-socket.png")
        server.close()  # the socket file stays
    finally:
        os.chdir(here)
    os.mknod(folder / "002-device.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))


def big_png(path: Path, size=(10_000, 10_000)) -> Path:
    """100 million pixels above Pillow's limit, made cheaply: a 1-bit image of zeros (12 kB as PNG)."""
    Image.new("1", size).save(path)
    return path


def errors_of(store: Path) -> dict[str, str]:
    rows = Store(store).sql("SELECT path, error FROM ingest_errors").to_pylist()
    return {Path(r["path"]).name: r["error"] for r in rows}


def test_special_files_and_a_huge_image_are_listed_and_never_block(data_dir, store_path):
    """In a subprocess with a DataLoader worker, so that a FIFO that blocks fails the test by its timeout."""
    cat, dog = data_dir / "train" / "cat", data_dir / "train" / "dog"
    add_special_files(cat)
    big_png(dog / "999-big.png")
    env = {**os.environ, "POLYSEM_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = zygote.run("ingest", data_dir, "--store", store_path, *TINY, "--num-workers", "1", "--batch-size", "4",
                     env=env, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "10 images stored, 0 already there, 4 unreadable" in run.stdout
    assert "DecompressionBomb" not in run.stderr and "decompression bomb" not in run.stderr.lower(), run.stderr
    assert errors_of(store_path) == {
        "000-fifo.png": "not a regular file (FIFO)",
        "001-socket.png": "not a regular file (socket)",
        "002-device.png": "not a regular file (character device)",
        "999-big.png": f"10000 x 10000 = 100,000,000 pixels, above the pixel limit of {PILLOW_LIMIT:,}; "
                       "ingest with a larger --max-pixels (max_pixels=) to read it",
    }
    # nothing was replaced or read: the special files are what they were
    assert stat.S_ISFIFO((cat / "000-fifo.png").stat().st_mode)
    assert stat.S_ISSOCK((cat / "001-socket.png").stat().st_mode)
    assert stat.S_ISCHR((cat / "002-device.png").stat().st_mode)


def test_a_huge_image_is_not_decoded_and_warns_nothing(tmp_path, monkeypatch):
    path = big_png(tmp_path / "big.png")

    def decoded(self, *args):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageRefused, match="10000 x 10000 = 100,000,000 pixels, above the pixel limit"):
            open_image(str(path), PILLOW_LIMIT)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)], caught


def test_the_limit_is_ours_on_both_sides_of_pillows(tmp_path, monkeypatch):
    """Pillow refuses above twice its limit: a larger max_pixels still opens the image; below, the
    refusal is ours, with the limit named."""
    make_image_folder(tmp_path, "x", {"a": 1}, size=(40, 40))  # 1600 pixels
    path = str(tmp_path / "x" / "a" / "000.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would raise DecompressionBombError (> 200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert open_image(path, 5000).size == (40, 40)
        with pytest.raises(ImageRefused, match="above the pixel limit of 100 "):
            open_image(path, 100)
        with pytest.raises(ImageRefused, match="1,600 pixels, above the pixel limit of 1,000;"):
            open_image(path, 1000)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)], caught


def test_max_pixels_reaches_the_workers_and_a_larger_one_reads_the_image_later(tmp_path):
    root = make_image_folder(tmp_path / "d", "train", {"cat": 3, "dog": 3, "emu": 3})
    make_image_folder(root, "train", {"dog": 1}, size=(40, 40), seed=3)  # dog/000.png: 1600 pixels, the others 400
    store = tmp_path / "s"
    model = {"model": "tests.models:tiny_net", "layer": "probe", "transform": "tests.models:small", "progress": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = polysem.ingest(store, root, **model, max_pixels=1000, num_workers=1, compact=False)
    assert (first.n_written, first.n_errors) == (8, 1)
    assert errors_of(store) == {"000.png": "40 x 40 = 1,600 pixels, above the pixel limit of 1,000; "
                                           "ingest with a larger --max-pixels (max_pixels=) to read it"}
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    again = polysem.ingest(store, root, **model, max_pixels=2000, num_workers=0)
    assert (again.n_written, again.n_already, again.n_errors) == (1, 8, 0)


@pytest.mark.parametrize("value, fragment", [("0", "--max-pixels must be from 1 to 2**63 - 1"),
                                             ("-5", "--max-pixels must be from 1 to 2**63 - 1")])
def test_a_bad_max_pixels_is_refused(cli, data_dir, store_path, value, fragment):
    assert_refused(cli("ingest", data_dir, "--store", store_path, *TINY, "--max-pixels", value), fragment)
    assert not store_path.exists()


@pytest.mark.parametrize("value", [True, 1.5, "100"])
def test_a_max_pixels_of_another_type_is_refused(data_dir, store_path, value):
    with pytest.raises(ArgumentError, match="`max_pixels` must be a whole number"):
        polysem.ingest(store_path, data_dir, model="tests.models:tiny_net", layer="probe",
                       transform="tests.models:small", max_pixels=value, progress=False)
    assert not store_path.exists()


# -- file links ------------------------------------------------------------------------------------

def link_into_another_class(root):
    os.symlink(root / "train" / "dog" / "000.png", root / "train" / "cat" / "x.png")


def relative_link_into_another_class(root):
    os.symlink("../dog/001.png", root / "train" / "cat" / "x.png")


def link_outside_data_dir(root):
    os.symlink("/etc/passwd", root / "train" / "cat" / "x.png")


def link_elsewhere_in_data_dir(root):
    (root / "pool").mkdir()
    os.replace(root / "train" / "cat" / "003.png", root / "pool" / "003.png")
    os.symlink(root / "pool" / "003.png", root / "train" / "cat" / "003.png")


def link_loop(root):
    os.symlink(root / "train" / "cat" / "y.png", root / "train" / "cat" / "x.png")
    os.symlink(root / "train" / "cat" / "x.png", root / "train" / "cat" / "y.png")


LINKS = [
    ("into another class", link_into_another_class, ["cat/x.png links to", "dog/000.png, in another class",
                                                     "stored under two classes", "remove the link"]),
    ("relative, into another class", relative_link_into_another_class, ["dog/001.png, in another class"]),
    ("outside DATA_DIR", link_outside_data_dir, ["cat/x.png links to /etc/passwd, outside DATA_DIR",
                                                 "must lead to a file in its own class folder"]),
    ("elsewhere in DATA_DIR", link_elsewhere_in_data_dir, ["pool/003.png, outside its class folder"]),
    ("loop", link_loop, ["a loop of links"]),
]


@pytest.mark.parametrize("change, fragments", [c[1:] for c in LINKS], ids=[c[0] for c in LINKS])
def test_a_file_link_out_of_its_class_creates_no_store(cli, data_dir, store_path, change, fragments):
    change(data_dir)
    assert_refused(cli("ingest", data_dir, "--store", store_path, *TINY), *fragments)
    assert not store_path.exists()


@pytest.mark.parametrize("change, fragments", [c[1:] for c in LINKS[:3]], ids=[c[0] for c in LINKS[:3]])
def test_a_file_link_out_of_its_class_leaves_an_existing_store_byte_identical(cli, data_dir, store_path, change,
                                                                              fragments):
    assert cli("ingest", data_dir, "--split", "val", "--store", store_path, *TINY).exit_code == 0
    before = snapshot(store_path)
    change(data_dir)
    assert_refused(cli("ingest", data_dir, "--split", "train", "--store", store_path, *TINY), *fragments)
    assert snapshot(store_path) == before


def test_a_file_link_inside_its_class_is_an_image_of_the_class(cli, data_dir, store_path, tmp_path):
    cat = data_dir / "train" / "cat"
    os.symlink("000.png", cat / "copy.png")
    # a class folder that is itself a link (a subset of a larger tree): links within it stay in the class
    elsewhere = make_image_folder(tmp_path / "elsewhere", "all", {"emu": 3}, seed=7) / "all" / "emu"
    os.symlink(elsewhere / "000.png", elsewhere / "again.png")
    os.rename(data_dir / "train" / "emu", tmp_path / "old-emu")
    os.symlink(elsewhere, data_dir / "train" / "emu")
    result = cli("ingest", data_dir, "--store", store_path, *TINY)
    assert result.exit_code == 0, result.output
    rows = Store(store_path).sql("SELECT path, target FROM samples").to_pylist()
    stored = {Path(r["path"]).relative_to(data_dir / "train").as_posix(): r["target"] for r in rows}
    assert stored["cat/copy.png"] == 0 and stored["emu/again.png"] == 2
    assert len(stored) == 12


# -- classes.json and --data ---------------------------------------------------------------------------

@pytest.mark.parametrize("content, fragments", [
    ({"cat": {"logit": 0}, "lion": {"logit": 1}}, ["classes.json names 'lion', which is no class folder",
                                                   "(it has: cat, dog, emu)", "fix or remove that entry"]),
    ({"cat": {"logit": 0, "label": "Felis"}}, ["the entry of 'cat' has unknown field 'label'",
                                               "the fields are name, wnid and logit"]),
], ids=["unknown key", "unknown field"])
def test_classes_json_naming_what_does_not_exist_is_refused(cli, data_dir, store_path, content, fragments):
    (data_dir / "classes.json").write_text(json.dumps(content))
    assert_refused(cli("ingest", data_dir, "--store", store_path, *TINY), *fragments)
    assert not store_path.exists()


def test_a_classes_json_that_is_a_fifo_is_refused_not_read(cli, data_dir, store_path):
    os.mkfifo(data_dir / "classes.json")
    assert_refused(cli("ingest", data_dir, "--store", store_path, *TINY), "classes.json is not a regular file (FIFO)")
    assert not store_path.exists()


def test_a_missing_data_folder_is_named_as_missing(cli, colour_store, tmp_path):
    before = snapshot(colour_store)
    args = ["disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--store", colour_store]
    assert_refused(cli(*args, "--data", tmp_path / "nonexistent"),
                   f"data folder {tmp_path / 'nonexistent'} does not exist", "pass --data with the folder")
    (tmp_path / "empty").mkdir()
    assert_refused(cli(*args, "--data", tmp_path / "empty"), f"data folder {tmp_path / 'empty'} has no train folder",
                   "pass --data with the folder that holds the train split")
    assert snapshot(colour_store) == before
