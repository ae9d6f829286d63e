"""Bounded decoding: a JPEG whose header declares more pixels than its bytes can hold is refused by both
decoders (`pil` and `tensor`) before anything is allocated, and `--decode tensor` decodes a batch in chunks of
at most `DECODE_BUDGET` declared pixels, with the inputs of one chunk.

The forged files are made here: a real small JPEG by Pillow, its frame header's height and width then edited.
"""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import polysem
from polysem.ingest import decode
from polysem.ingest.decode import decode_batch
from polysem.query import Store
from polysem.util.images import ImageRefused, declared_jpeg_frame, jpeg_frame, open_image, read_for_decoding
from tests.helpers import jpeg_pixels, make_jpeg_folder

CPU = torch.device("cpu")
TINY_DEFAULT = {"model": "tests.models:tiny_net", "layer": "probe", "progress": False}  # the default transform
TOO_FEW = "too few for that size"
FORGED = "(a JPEG of that size holds at least {least:,}: a damaged or forged image)"
SIZES = ((300, 220), (220, 300), (500, 375), (123, 97), (256, 256))


def forged_jpeg(path: Path, declared=(9000, 9000), real=(1, 1), mode="RGB", marker=0xC0) -> bytes:
    """A real `real`-sized JPEG whose baseline frame header (SOF0) was edited to declare `declared` (width,
    height), and its marker to `marker`; written to `path`, returned."""
    buffer = io.BytesIO()
    Image.new(mode, real, 90 if mode == "L" else (10, 200, 30)).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    assert data[at + 4] == 8 and struct.unpack(">HH", data[at + 5:at + 9]) == real[::-1]  # precision, height, width
    data[at + 1] = marker
    data[at + 5:at + 9] = struct.pack(">HH", declared[1], declared[0])
    path.write_bytes(bytes(data))
    return bytes(data)


def forged_message(data: bytes, declared=(9000, 9000)) -> str:
    width, height = declared
    least = -(-(-(-width // 8) * -(-height // 8)) // 8)
    return (f"declares {width}x{height} pixels but holds {len(data):,} bytes, {TOO_FEW} "
            + FORGED.format(least=least))


def errors(store: Path) -> dict[str, str]:
    found = Store(store).sql("SELECT path, error FROM ingest_errors").to_pylist()
    return {Path(r["path"]).name: r["error"] for r in found}


def stored_paths(store: Path) -> list[str]:
    return sorted(Path(r["path"]).name for r in Store(store).sql("SELECT path FROM samples").to_pylist())


def good_and_forged(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Three classes (TinyNet's 3 outputs) of 2 good JPEGs each, named first so that the probe reads one, and
    forged ones: RGB and grayscale, declaring 9000 x 9000 and 5000 x 4000. Returns the folder and each forged
    file's expected message."""
    root = tmp_path / "data"
    rng = np.random.default_rng(7)
    expected = {}
    for name in ("a", "b", "c"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(jpeg_pixels(rng, 60 + 10 * i, 40)).save(folder / f"good{i}.jpg", quality=90)
    for folder, file, declared, real, mode in (("a", "x_forged.jpg", (9000, 9000), (1, 1), "RGB"),
                                               ("b", "x_forged.jpg", (5000, 4000), (16, 16), "RGB"),
                                               ("c", "x_gray.jpg", (9000, 9000), (8, 8), "L")):
        data = forged_jpeg(root / "train" / folder / file, declared, real, mode)
        expected[f"{folder}/{file}"] = forged_message(data, declared)
    return root, expected


@pytest.mark.parametrize("decoder", ["pil", "tensor"])
def test_forged_jpegs_are_ingest_errors_and_the_good_ones_are_stored(tmp_path, decoder):
    data, expected = good_and_forged(tmp_path)
    store = tmp_path / "store"
    summary = polysem.ingest(store, data, **TINY_DEFAULT, decode=decoder, batch_size=16)
    assert (summary.n_written, summary.n_errors) == (6, 3)
    found = {f"{Path(r['path']).parent.name}/{Path(r['path']).name}": r["error"]
             for r in Store(store).sql("SELECT path, error FROM ingest_errors").to_pylist()}
    assert found == expected
    assert stored_paths(store) == sorted(["good0.jpg", "good1.jpg"] * 3)


def test_a_batch_of_forged_jpegs_leaves_the_tensor_ingest_going(tmp_path, cli):
    """18 forged files of 9000 x 9000 declared pixels, batched by 16: listed one by one, the others stored, exit 0
    (decoded, they would be 3.9 GB in one batch)."""
    data, _ = good_and_forged(tmp_path)
    for i in range(15):
        forged_jpeg(data / "train" / "a" / f"y_forged{i:02d}.jpg")
    store = tmp_path / "store"
    result = cli("ingest", data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
                 "--decode", "tensor", "--batch-size", 16)
    assert result.exit_code == 0, result.output
    assert "train: 6 images stored, 0 already there, 18 unreadable" in result.output
    found = errors(store)
    assert len(Store(store).sql("SELECT * FROM ingest_errors")) == 18
    assert all(TOO_FEW in message and "forged image" in message for message in found.values())


def test_the_rule_reads_the_header_only_and_spares_honest_and_arithmetic_jpegs(tmp_path):
    data = forged_jpeg(tmp_path / "forged.jpg")
    frame = jpeg_frame(io.BytesIO(data))
    assert (frame.marker, frame.width, frame.height) == (0xC0, 9000, 9000)
    with pytest.raises(ImageRefused, match="declares 9000x9000 pixels but holds"):
        declared_jpeg_frame(io.BytesIO(data), len(data))
    for path in (tmp_path / "forged.jpg",):  # both decoders' readers refuse it from its header
        with pytest.raises(ImageRefused, match=TOO_FEW):
            open_image(str(path), None)
        with pytest.raises(ImageRefused, match=TOO_FEW):
            read_for_decoding(str(path), None)
    # an honest JPEG as small as that size allows (one colour, quality 1, optimised tables), baseline and
    # progressive, colour and grayscale: not refused
    for mode in ("RGB", "L"):
        for progressive in (False, True):
            buffer = io.BytesIO()
            Image.new(mode, (3000, 2000)).save(buffer, format="JPEG", quality=1, optimize=True,
                                               progressive=progressive)
            honest = buffer.getvalue()
            assert declared_jpeg_frame(io.BytesIO(honest), len(honest)).width == 3000
    # arithmetic coding (SOF9) may code a block in less than a bit: the rule does not apply
    arithmetic = forged_jpeg(tmp_path / "arithmetic.jpg", marker=0xC9)
    assert declared_jpeg_frame(io.BytesIO(arithmetic), len(arithmetic)).arithmetic


def jpeg_payloads(tmp_path: Path) -> list[torch.Tensor]:
    data = make_jpeg_folder(tmp_path / "honest", "train", {"a": 7}, sizes=SIZES)
    paths = sorted((data / "train" / "a").glob("*.jpg"))
    return [read_for_decoding(str(p), None) for p in paths]


def test_a_batch_above_the_budget_is_decoded_in_chunks_with_the_inputs_of_one(tmp_path, monkeypatch):
    payloads = jpeg_payloads(tmp_path)
    declared = [jpeg_frame(io.BytesIO(p.numpy().tobytes())) for p in payloads]
    pixels = [f.width * f.height for f in declared]
    kept, whole, failures = decode_batch(payloads, CPU)  # the default budget: one chunk
    assert kept == list(range(7)) and failures == [] and whole.shape == (7, 3, 224, 224)
    calls = []
    real = decode.decode_images

    def counting(chunk, device, **kwargs):
        calls.append(len(chunk))
        return real(chunk, device, **kwargs)

    monkeypatch.setattr(decode, "decode_images", counting)
    kept, chunked, failures = decode_batch(payloads, CPU, budget=max(pixels))
    assert kept == list(range(7)) and failures == []
    assert len(calls) >= 3 and sum(calls) == 7
    assert torch.equal(chunked, whole)
    # an image above the budget on its own is refused, before decoding; the others are decoded
    calls.clear()
    budget = sorted(pixels)[-2]
    largest = pixels.index(max(pixels))
    kept, some, failures = decode_batch(payloads, CPU, budget=budget)
    width, height = declared[largest].width, declared[largest].height
    assert failures == [(largest, (f"{width} x {height} = {width * height:,} pixels, above the {budget:,} that "
                                   "--decode tensor decodes at once; shrink the image, or ingest it into a store "
                                   "decoded with --decode pil"))]
    assert kept == [i for i in range(7) if i != largest] and sum(calls) == 6
    assert torch.equal(some, whole[kept])


def test_an_ingest_in_chunks_stores_the_rows_of_one(tmp_path, monkeypatch):
    data = make_jpeg_folder(tmp_path / "data", "train", {"a": 3, "b": 2, "c": 2}, sizes=SIZES)
    polysem.ingest(tmp_path / "whole", data, **TINY_DEFAULT, decode="tensor", batch_size=7)
    monkeypatch.setattr(decode, "DECODE_BUDGET", 500 * 375)  # the largest image: a chunk of one or two
    calls = []
    real = decode.decode_images
    monkeypatch.setattr(decode, "decode_images", lambda chunk, device, **kw: calls.append(len(chunk))
                        or real(chunk, device, **kw))
    summary = polysem.ingest(tmp_path / "chunked", data, **TINY_DEFAULT, decode="tensor", batch_size=7)
    assert (summary.n_written, summary.n_errors) == (7, 0) and len(calls) >= 3
    order = "SELECT * EXCLUDE (split) FROM samples ORDER BY image_id"
    whole, chunked = (Store(tmp_path / s).sql(order).to_pylist() for s in ("whole", "chunked"))
    assert len(whole) == len(chunked) == 7
    for a, b in zip(whole, chunked, strict=True):
        assert a == b
