"""`--decode tensor`: batched decode_jpeg and the default transform as tensors on the ingest's device.

Its preprocessing is checked against an independent one (Pillow's decoder, torch's own interpolate, the crop
and the normalisation by hand), its attributions against that preprocessing through attribute_batch and
against the default decoder (`pil`); mixed files, the refusals, the store's record and a kill and resume.
The same code runs on CUDA (device="cuda"); the test marked for CUDA runs where one is present.
"""

import os
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from PIL import Image

import polysem
from polysem.errors import ArgumentError, ArgumentRange, ModelError, StoreMismatch
from polysem.ingest.attribution import attribute_batch
from polysem.ingest.decode import decode_images, imagenet_batch
from polysem.ingest.models import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform
from polysem.query import Store
from polysem.util.images import read_for_decoding
from tests.helpers import ROOT, TINY, assert_refused, jpeg_pixels, kill_when_parts, make_jpeg_folder, snapshot
from tests import zygote
from tests.models import tiny_net

CPU = torch.device("cpu")
TINY_DEFAULT = {"model": "tests.models:tiny_net", "layer": "probe", "progress": False}  # the default transform
# (width, height): landscape and portrait; crops whose margin is odd (62.5 and 58.5 px: CenterCrop's anchor
# rounds half to even), a scale of exactly 1.25, an upscaled small image, a square
SIZES = ((300, 220), (220, 300), (500, 375), (470, 320), (123, 97), (333, 250), (256, 256))
GREY = 1 / 255 / min(IMAGENET_STD)  # one grey level after normalisation, at its largest

# Observed on the CPU (torch 2.14.1, torchvision 0.29.1, these 7 JPEGs): the tensor path's inputs equal the
# independent preprocessing to 7.2e-7 (float rounding; a crop one pixel off differs by 1.06, a wrong std by
# 1.45); TinyNet's attributions and input sums equal the reference's to a relative 1.5e-7 and 1.7e-7 (a crop
# one pixel off: 1.3e-3, a wrong std: 0.93). Against Pillow's resize the inputs differ by at most 2 grey
# levels on 1.2 % of the values (0.012 grey levels on average), TinyNet's attributions by a relative 3.5e-5.
SAME = 1e-5  # normalised units
SAME_ATTRIBUTION = 1e-5  # relative to the image's largest attribution
NEAR_PIL = 1e-3  # the attributions of pil's and tensor's pixels (TinyNet), relative


def jpegs(tmp_path: Path, counts=None) -> Path:
    return make_jpeg_folder(tmp_path / "data", "train", counts or {"a": 3, "b": 2, "c": 2}, sizes=SIZES)


def reference_inputs(paths, *, crop_shift: int = 0, std=IMAGENET_STD) -> torch.Tensor:
    """The default transform by hand on Pillow's decoded pixels: shorter side to 256 (the longer one
    int(256 * long / short)) with torch's bilinear antialiased interpolate on uint8, a centre crop of 224 at
    int(round(margin / 2)) (CenterCrop's anchor), then / 255, - mean, / std."""
    out = []
    for path in paths:
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        height, width = pixels.shape[1:]
        short, long = min(height, width), max(height, width)
        size = (256, int(256 * long / short)) if height <= width else (int(256 * long / short), 256)
        resized = torch.nn.functional.interpolate(pixels[None], size=size, mode="bilinear", antialias=True,
                                                  align_corners=False)[0]
        top, left = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2)) + crop_shift
        cropped = resized[:, top:top + 224, left:left + 224].float() / 255
        mean, spread = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        out.append((cropped - mean) / spread)
    return torch.stack(out)


def tensor_inputs(paths, device=CPU) -> torch.Tensor:
    images = decode_images([read_for_decoding(str(p), None) for p in paths], device)
    return imagenet_batch(images)


def rows(store: Path) -> dict[str, dict]:
    table = Store(store).sql("SELECT * EXCLUDE (split) FROM samples ORDER BY image_id").to_pylist()
    return {r["path"]: r for r in table}


def relative(a, b) -> float:
    """max |a - b| / max |b|: the largest difference relative to the image's largest attribution."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_the_tensor_preprocessing_equals_an_independent_one(tmp_path):
    paths = sorted((jpegs(tmp_path) / "train").rglob("*.jpg"))
    assert {Image.open(p).size for p in paths} == set(SIZES)
    decoded = decode_images([read_for_decoding(str(p), None) for p in paths], CPU)
    for path, image in zip(paths, decoded, strict=True):  # libjpeg-turbo on both sides: Pillow's very pixels
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(Image.open(path).convert("RGB"))))
    got, expected = tensor_inputs(paths), reference_inputs(paths)
    assert got.shape == (len(paths), 3, 224, 224) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= SAME
    # the bound would catch a crop one pixel off, and a wrong normalisation
    assert (got - reference_inputs(paths, crop_shift=1)).abs().max().item() > 100 * SAME
    assert (got - reference_inputs(paths, std=(0.5, 0.5, 0.5))).abs().max().item() > 100 * SAME
    # against the default pipeline (Pillow's decoder and resize): the same decoded pixels, a resize
    # within 2 grey levels of Pillow's
    pil = torch.stack([imagenet_transform()(Image.open(p).convert("RGB")) for p in paths])
    assert (got - pil).abs().max().item() <= 2.01 * GREY
    assert (got - pil).abs().mean().item() <= 0.05 * GREY


def test_tensor_ingest_gives_the_attributions_of_the_independent_preprocessing(tmp_path):
    data = jpegs(tmp_path)
    summary = polysem.ingest(tmp_path / "tensor", data, **TINY_DEFAULT, decode="tensor", batch_size=4)
    assert (summary.n_written, summary.n_errors) == (7, 0)
    polysem.ingest(tmp_path / "pil", data, **TINY_DEFAULT, batch_size=4)
    stored, by_pil = rows(tmp_path / "tensor"), rows(tmp_path / "pil")
    paths = sorted(stored)
    model = tiny_net().eval()
    targets = torch.tensor([stored[p]["target"] for p in paths])  # 3 folders, 3 outputs: logit = class id
    expected = attribute_batch(model, model.probe, reference_inputs(paths), targets)
    wrong = attribute_batch(model, model.probe, reference_inputs(paths, std=(0.5, 0.5, 0.5)), targets)
    shifted = attribute_batch(model, model.probe, reference_inputs(paths, crop_shift=1), targets)
    for i, path in enumerate(paths):
        row = stored[path]
        assert relative(row["attribution"], expected.attribution[i]) <= SAME_ATTRIBUTION
        assert relative(row["input_sum"], expected.input_sum[i]) <= SAME_ATTRIBUTION
        assert relative(row["attribution"], wrong.attribution[i]) > 100 * SAME_ATTRIBUTION
        assert relative(row["attribution"], shifted.attribution[i]) > 10 * SAME_ATTRIBUTION
        assert row["target_logit"] == pytest.approx(float(expected.logits[i, row["target"]]), rel=1e-5, abs=1e-6)
        # against pil: the resize's grey level here and there
        assert relative(row["attribution"], by_pil[path]["attribution"]) <= NEAR_PIL
        assert (row["prediction"], row["positions"]) == (by_pil[path]["prediction"], by_pil[path]["positions"])


def make_mixed(tmp_path: Path, max_pixels_image: bool = True) -> Path:
    """One class of every kind of file: RGB, grayscale and CMYK JPEGs, a PNG with alpha, a BMP, a corrupt and a
    truncated JPEG, and a JPEG above the pixel limit used below (100,000)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "mixed"
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    for name in ("b", "c"):  # TinyNet's 3 outputs: 3 class folders
        (root / "train" / name).mkdir()
        Image.fromarray(jpeg_pixels(rng, 90, 70)).save(root / "train" / name / "x.jpg", quality=90)
    pixels = jpeg_pixels(rng, 300, 220)
    Image.fromarray(pixels).save(folder / "rgb.jpg", quality=90)
    Image.fromarray(pixels).convert("L").save(folder / "gray.jpg", quality=90)
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(pixels).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(pixels).save(folder / "bitmap.bmp")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    whole = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    if max_pixels_image:
        Image.fromarray(jpeg_pixels(rng, 400, 300)).save(folder / "large.jpg", quality=90)  # 120,000 pixels
    return root


def errors(store: Path) -> dict[str, str]:
    found = Store(store).sql("SELECT path, error FROM ingest_errors").to_pylist()
    return {Path(r["path"]).name: r["error"] for r in found}


def test_mixed_files_fall_back_or_become_errors_as_with_pil(tmp_path):
    data = make_mixed(tmp_path)
    # the files are read in a DataLoader worker (as on a GPU machine), the JPEGs decoded here
    tensor = polysem.ingest(tmp_path / "tensor", data, **TINY_DEFAULT, decode="tensor", max_pixels=100_000,
                            batch_size=16, num_workers=1)
    pil = polysem.ingest(tmp_path / "pil", data, **TINY_DEFAULT, max_pixels=100_000, batch_size=16, num_workers=0)
    assert (tensor.n_written, tensor.n_errors) == (pil.n_written, pil.n_errors) == (7, 3)
    by_tensor, by_pil = rows(tmp_path / "tensor"), rows(tmp_path / "pil")
    assert sorted(by_tensor) == sorted(by_pil)
    for path in by_tensor:  # the fallbacks (decode_image, Pillow for the BMP) give the pixels Pillow gives
        assert relative(by_tensor[path]["attribution"], by_pil[path]["attribution"]) <= NEAR_PIL, path
    tensor_errors, pil_errors = errors(tmp_path / "tensor"), errors(tmp_path / "pil")
    assert set(tensor_errors) == set(pil_errors) == {"corrupt.jpg", "truncated.jpg", "large.jpg"}
    assert tensor_errors["large.jpg"] == pil_errors["large.jpg"] == (
        "400 x 300 = 120,000 pixels, above the pixel limit of 100,000; ingest with a larger --max-pixels "
        "(max_pixels=) to read it")
    assert tensor_errors["truncated.jpg"] == "RuntimeError: Image is incomplete or truncated"  # no source path
    assert tensor_errors["corrupt.jpg"] == pil_errors["corrupt.jpg"]  # Pillow reads the header in both


def test_a_truncated_jpeg_in_a_batch_leaves_the_others_decoded(tmp_path):
    """decode_jpeg fails the whole batch for one bad file: each is then decoded alone."""
    data = make_mixed(tmp_path, max_pixels_image=False)
    folder = data / "train" / "a"
    payloads = [read_for_decoding(str(folder / name), None) for name in ("rgb.jpg", "truncated.jpg", "gray.jpg")]
    assert [p.dim() for p in payloads] == [1, 1, 3]  # JPEG bytes for the batch; grayscale decoded already
    images = decode_images(payloads, CPU)
    assert isinstance(images[1], str) and "truncated" in images[1]
    assert tuple(images[0].shape) == tuple(images[2].shape) == (3, 220, 300)
    with pytest.raises(RuntimeError):
        decode_images(payloads, CPU, retry=False)


def test_tensor_is_refused_with_a_custom_transform(cli, tmp_path):
    data, store = jpegs(tmp_path), tmp_path / "s"
    result = cli("ingest", data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
                 "--transform", "tests.models:small", "--decode", "tensor")
    assert_refused(result, "--decode tensor decodes and preprocesses for the default transform only",
                   "not --transform tests.models:small", "use --decode pil")
    assert not store.exists()
    # a store made with a custom transform: a later split is refused too, the store byte-identical
    assert cli("ingest", data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
               "--transform", "tests.models:small", "--limit", "1").exit_code == 0
    before = snapshot(store)
    assert_refused(cli("ingest", data, "--store", store, "--decode", "tensor"), "default transform only",
                   "not the store's transform tests.models:small")
    assert snapshot(store) == before
    with pytest.raises(ArgumentRange, match="`decode` must be pil or tensor, got str 'nvjpeg'"):
        polysem.ingest(store, data, decode="nvjpeg")
    with pytest.raises(ArgumentError, match="`decode` must be text"):
        polysem.ingest(store, data, decode=True)
    assert snapshot(store) == before


def test_the_store_records_its_decoder_and_refuses_another(cli, tmp_path):
    data = jpegs(tmp_path)
    make_jpeg_folder(data, "val", {"a": 1, "b": 1, "c": 1}, sizes=SIZES, seed=1)
    tensor, pil = tmp_path / "tensor", tmp_path / "pil"
    args = ["--model", "tests.models:tiny_net", "--layer", "probe"]
    assert cli("ingest", data, "--store", tensor, *args, "--decode", "tensor", "--limit", "1").exit_code == 0
    assert cli("ingest", data, "--store", pil, *args, "--limit", "1").exit_code == 0
    assert Store(tensor).meta()["decode"] == "tensor" and Store(pil).meta()["decode"] == "pil"
    assert "transform  imagenet  (decoded with tensor)" in cli("info", "--store", tensor).output
    for store, other in ((tensor, "pil"), (pil, "tensor")):
        before = snapshot(store)
        for split in ("train", "val"):  # a resume of the split, and another split
            result = cli("ingest", data, "--store", store, "--split", split, "--decode", other)
            assert_refused(result, f"the store holds --decode {'tensor' if other == 'pil' else 'pil'} (one decoder "
                                   f"per store: their pixels differ), not {other}; omit --decode or use another --store")
        with pytest.raises(StoreMismatch):
            polysem.ingest(store, data, decode=other, progress=False)
        assert snapshot(store) == before
    # without --decode a later ingest takes the store's: the val rows are the tensor path's
    assert cli("ingest", data, "--store", tensor, "--split", "val").exit_code == 0
    polysem.ingest(tmp_path / "fresh", data, "val", **TINY_DEFAULT, decode="tensor")
    later = Store(tensor).sql("SELECT path, attribution FROM samples WHERE split = 'val' ORDER BY path").to_pylist()
    fresh = Store(tmp_path / "fresh").sql("SELECT path, attribution FROM samples ORDER BY path").to_pylist()
    assert [r["path"] for r in later] == [r["path"] for r in fresh] and len(later) == 3
    for a, b in zip(later, fresh, strict=True):
        assert relative(a["attribution"], b["attribution"]) <= 1e-6


def test_a_store_without_the_key_was_decoded_with_pil(cli, tmp_path):
    """Stores made before `decode` existed have no key: they count as pil, and no migration writes one."""
    data, store = jpegs(tmp_path), tmp_path / "old"
    assert cli("ingest", data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
               "--limit", "1").exit_code == 0
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("DELETE FROM store_meta WHERE key = 'decode'")
    assert "decode" not in Store(store).meta() and Store(store).info()["decode"] == "pil"
    before = snapshot(store)
    assert_refused(cli("ingest", data, "--store", store, "--decode", "tensor"),
                   "the store holds --decode pil (a store made before --decode existed was decoded with pil), "
                   "not tensor")
    assert snapshot(store) == before
    result = cli("ingest", data, "--store", store)  # the rest of the split, with pil
    assert result.exit_code == 0 and "4 images stored, 3 already there" in result.output
    assert "decode" not in Store(store).meta()


@pytest.mark.parametrize("value", ["'nvjpeg'", "5", "'PIL'", "'tensor '"])
def test_a_decoder_polysem_never_records_is_refused(cli, tmp_path, value):
    """A received store's `decode` that is neither pil nor tensor: refused, never read as pil."""
    data, store = jpegs(tmp_path), tmp_path / "store"
    assert cli("ingest", data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
               "--limit", "1").exit_code == 0
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute(f"UPDATE store_meta SET value = to_json({value}) WHERE key = 'decode'")
    before = snapshot(store)
    for command in (["info"], ["ingest", data]):
        assert_refused(cli(*command, "--store", store), "names decode", "neither of pil, tensor", "new --store")
    assert snapshot(store) == before


def test_a_received_store_pairing_tensor_with_its_own_transform_is_refused(cli, tmp_path):
    """Ingest never records decode tensor with a transform of the store's own; an edited catalog that does
    is refused before a row is written, not ingested through the default transform."""
    data, store = jpegs(tmp_path), tmp_path / "store"
    assert cli("ingest", data, "--store", store, *TINY, "--limit", "1").exit_code == 0
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE store_meta SET value = to_json('tensor') WHERE key = 'decode'")
    before = snapshot(store)
    assert_refused(cli("ingest", data, "--store", store), "records decode tensor with its own transform",
                   "new --store")
    assert snapshot(store) == before


def test_the_device_decoder_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    from polysem.ingest import decode

    def broken(*args, **kwargs):
        raise RuntimeError("decode_jpeg, /src/decode_jpegs_cuda.cpp:12, nvJPEG is not available")

    monkeypatch.setattr("torchvision.io.decode_jpeg", broken)
    with pytest.raises(ModelError, match=r"`decode`=tensor cannot decode JPEGs on cpu \(RuntimeError: nvJPEG is not "
                                         r"available\); use `decode`=pil$"):
        polysem.ingest(tmp_path / "s", jpegs(tmp_path), **TINY_DEFAULT, decode="tensor")
    assert not (tmp_path / "s").exists()
    assert decode.DECODERS == ("pil", "tensor")


def polysem_process(*args):
    """`python -m polysem.cli ARGS` in a process of its own (forked from the worker's zygote: tests/zygote.py)."""
    return zygote.polysem_process(*args, env={**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": str(ROOT)})


def test_kill_and_resume_with_the_tensor_decoder_gives_identical_rows(tmp_path, cli, monkeypatch):
    """Killed (SIGKILL) in its own process; the same command resumes it, in this process."""
    from tests.test_resume import assert_same_rows, without_slowdown

    data = make_jpeg_folder(tmp_path / "data", "train", {"a": 12, "b": 12, "c": 12}, sizes=SIZES)
    killed = tmp_path / "killed"
    args = ["ingest", data, "--model", "tests.models:slow_tiny_net", "--layer", "probe", "--decode", "tensor",
            "--batch-size", 2, "--rows-per-part", 4, "--store", killed]
    kill_when_parts(polysem_process(*args), killed / "samples" / "train")
    stored = Store(killed).sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    assert 8 <= stored < 36, "the run must be killed mid-way"
    without_slowdown(monkeypatch)
    resumed = cli(*args)
    assert resumed.exit_code == 0, resumed.output
    assert f"{36 - stored} images stored, {stored} already there" in resumed.output
    polysem.ingest(tmp_path / "reference", data, **TINY_DEFAULT, decode="tensor", batch_size=2)
    order = "SELECT * EXCLUDE (split) FROM samples ORDER BY image_id"
    assert_same_rows(Store(killed).sql(order).to_pylist(), Store(tmp_path / "reference").sql(order).to_pylist())
