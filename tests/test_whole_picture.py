"""The whole picture: each unit's top images over every val class, not only the run's concept
classes, and the class histogram of its top N, in SQL, as data, in the figures and in the report.

Known answers: `channel_activation` against a model pass (TinyNet: a 3x3 conv with stride, padding and bias;
ColourNet: no bias), and rgb_sum_net split into green / red, whose c'1 keeps the B input: blue images, a class of
no concept, sit at the top of c'1. The expected tops and histograms are computed here from a model pass (the
layer's input caught with a hook, the units' weights applied in numpy), never from the store's SQL.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polysem.query import Store
from tests import models
from tests.helpers import make_colour_images

RGB = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
VAL_PER_CLASS = 40  # 120 val images: more than the default top 100, so the top is a real cut


def _images(store: Store, split: str) -> list[dict]:
    return store.sql("SELECT image_id, path, target FROM samples WHERE split = $s ORDER BY image_id",
                     {"s": split}).to_pylist()


def _layer_io(model, layer, transform, rows) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of `layer` per image, float64: a plain forward pass with a hook."""
    caught = {}

    def hook(_module, inputs, output):
        caught["in"], caught["out"] = inputs[0].detach().double(), output.detach().double()

    handle = layer.register_forward_hook(hook)
    try:
        ins, outs = [], []
        with torch.no_grad():
            for row in rows:
                with Image.open(row["path"]) as image:
                    model(transform(image.convert("RGB")).unsqueeze(0))
                ins.append(caught["in"][0].numpy())
                outs.append(caught["out"][0].numpy())
    finally:
        handle.remove()
    return np.stack(ins), np.stack(outs)


@pytest.mark.parametrize("name, make, transform", [
    ("tiny", models.tiny_net, models.small),      # 3x3, stride 2, padding 1, with bias
    ("colour", models.colour_net, models.to_tensor),  # 1x1, no bias (layer_weights.bias is NULL)
])
def test_channel_activation_is_the_spatial_sum_of_a_model_pass(fixture_store, name, make, transform):
    store = Store(fixture_store(name).store)
    model = make().eval()
    for split in ("train", "val"):
        rows = _images(store, split)
        _, out = _layer_io(model, model.probe, transform, rows)
        expected = out.sum(axis=(2, 3))  # images x channels
        got = store.sql("SELECT s.image_id, lw.channel, channel_activation(lw.weight, s.input_sum, lw.bias, "
                        "s.positions) AS a FROM samples s, layer_weights lw WHERE s.split = $s",
                        {"s": split}).to_pylist()
        index = {r["image_id"]: i for i, r in enumerate(rows)}
        assert len(got) == expected.size
        for r in got:
            assert r["a"] == pytest.approx(expected[index[r["image_id"]], r["channel"]], rel=1e-5, abs=1e-5)
        # the top images of a channel over every class of the split: the model pass's ranking
        for channel in range(expected.shape[1]):
            n = len(rows) - 1
            top = store.sql("SELECT * FROM channel_top_images($c, $n, split_name := $s)",
                            {"c": channel, "n": n, "s": split}).to_pylist()
            assert [r["rank"] for r in top] == list(range(1, n + 1))
            values = [r["activation"] for r in top]
            assert values == sorted(values, reverse=True)
            want = sorted(expected[:, channel], reverse=True)[:n]
            assert values == pytest.approx(want, rel=1e-5, abs=1e-5)
            assert {r["image_id"] for r in top} <= set(index)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """rgb_sum_net, train 6 and val 40 solid-colour images per class, channel 0 split into green / red."""
    from polysem.ingest import ingest
    from polysem.method.runs import disentangle

    base = tmp_path_factory.mktemp("whole")
    data = make_colour_images(base / "data", "train", 6, noise=4, colours=RGB)
    make_colour_images(data, "val", VAL_PER_CLASS, seed=1, noise=4, colours=RGB)
    store = base / "store"
    for split in ("train", "val"):
        ingest(store, data, split, model="tests.models:rgb_sum_net", layer="probe",
               transform="tests.models:to_tensor", progress=False)
    run = disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    assert run.sources == [[1, 2], [0]] and run.shared == []  # c'1 takes the G and the B input
    return store, run.run_id, run.to_dict()  # plain data, as the figures read it


def _expected(store_path: Path, run: dict) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every val image and each unit's spatially summed activation, from a model pass of the original model:
    the probe's input (the R, G, B detectors) summed over space, times the unit's weights (its own and the
    shared inputs; the original channel all of them)."""
    store = Store(store_path)
    rows = _images(store, "val")
    model = models.rgb_sum_net().eval()
    inputs, _ = _layer_io(model, model.probe, models.to_tensor, rows)
    summed = inputs.sum(axis=(2, 3))  # images x l-1 channels
    weight = model.probe.weight.detach().double().numpy()[run["channel"], :, 0, 0]
    keep = {"original": list(range(len(weight)))}
    keep |= {f"c{j}": [*sources, *run["shared"]] for j, sources in enumerate(run["sources"], start=1)}
    acts = {unit: summed[:, ins] @ weight[ins] for unit, ins in keep.items()}
    return rows, acts


def _top_counts(rows, values, n, names) -> Counter:
    order = sorted(range(len(rows)), key=lambda i: (-values[i], rows[i]["image_id"]))[:n]
    return Counter(names[rows[i]["target"]] for i in order)


def test_a_unit_whose_top_images_come_from_outside_its_concept_shows_that_class(rgb_run):
    store_path, run_id, run = rgb_run
    store = Store(store_path)
    names = {0: "blue", 1: "green", 2: "red"}
    rows, acts = _expected(store_path, run)
    # every val image of every class ranked, with the activations of the model pass
    top = store.sql("SELECT * FROM unit_top_images($r, 1000)", {"r": run_id}).to_pylist()
    index = {r["image_id"]: i for i, r in enumerate(rows)}
    for unit in ("original", "c1", "c2"):
        mine = [r for r in top if r["unit"] == unit]
        assert len(mine) == 3 * VAL_PER_CLASS  # every class, not only green and red
        for r in mine:
            assert r["activation"] == pytest.approx(acts[unit][index[r["image_id"]]], rel=1e-6)
            assert r["concept"] == {0: None, 1: 1, 2: 2}[r["class_id"]]
    # c'1 (concept green) has the blue images at its top with the green ones: blue is of no concept
    for n, unit in ((2 * VAL_PER_CLASS, "c1"), (VAL_PER_CLASS, "c2")):
        histogram = store.sql("SELECT * FROM unit_class_histogram($r, $n) WHERE unit = $u",
                              {"r": run_id, "n": n, "u": unit}).to_pylist()
        assert Counter({h["name"]: h["n_images"] for h in histogram}) == _top_counts(rows, acts[unit], n, names)
    c1 = store.sql("SELECT * FROM unit_class_histogram($r, 80) WHERE unit = 'c1'", {"r": run_id}).to_pylist()
    assert {(h["name"], h["concept"], h["n_images"], h["share"]) for h in c1} == {
        ("blue", None, 40, 0.5), ("green", 1, 40, 0.5)}
    c2 = store.sql("SELECT * FROM unit_class_histogram($r, 40) WHERE unit = 'c2'", {"r": run_id}).to_pylist()
    assert [(h["name"], h["concept"], h["n_images"]) for h in c2] == [("red", 2, 40)]


def test_evaluate_json_holds_each_units_top_100_histogram(rgb_run, cli):
    store_path, run_id, run = rgb_run
    shown = cli("evaluate", run_id, "--store", store_path, "--format", "json")
    assert shown.exit_code == 0, shown.output
    top = json.loads(shown.stdout)["top_classes"]
    assert (top["split"], top["n"], top["n_images"]) == ("val", 100, 3 * VAL_PER_CLASS)
    assert set(top["units"]) == {"original", "c1", "c2"}
    rows, acts = _expected(store_path, run)
    names = {0: "blue", 1: "green", 2: "red"}
    c1 = {h["name"]: h for h in top["units"]["c1"]}
    # c'1's top 100: all 40 blue (no concept), all 40 green, and the 20 reds it fires most for
    assert Counter({k: h["n_images"] for k, h in c1.items()}) == _top_counts(rows, acts["c1"], 100, names) == \
        Counter(blue=40, green=40, red=20)
    assert c1["blue"]["concept"] is None and c1["blue"]["share"] == pytest.approx(0.4)
    assert c1["red"]["concept"] == 2 and c1["green"]["concept"] == 1
    assert [h["name"] for h in top["units"]["c1"]][:2] == ["blue", "green"]  # most frequent first, then class id
    assert {h["name"]: h["n_images"] for h in top["units"]["c2"]}["red"] == 40
    for unit in top["units"].values():
        assert sum(h["n_images"] for h in unit) == 100 and sum(h["share"] for h in unit) == pytest.approx(1)


def test_all_val_images_when_fewer_than_n(rgb_run):
    from polysem.method.evaluation import top_class_histograms

    store_path, run_id, _ = rgb_run
    result = top_class_histograms(Store(store_path), run_id, 1000)
    for unit in result.units.values():
        assert sorted((h["name"], h["n_images"]) for h in unit) == [("blue", 40), ("green", 40), ("red", 40)]


def test_the_whole_picture_data_figure_and_report(rgb_run, cli, tmp_path):
    from polysem.method.figure_data import whole_top_images

    store_path, run_id, run = rgb_run
    whole = whole_top_images(Store(store_path), {**run, "run_id": run_id})
    assert list(whole.units) == ["original", "c1", "c2"]
    rows, acts = _expected(store_path, run)
    by_id = {r["image_id"]: r for r in rows}
    c1 = whole.units["c1"]
    assert len(c1.top) == 100 and len(c1.shown) == 6 and c1.own == 1
    assert {image.class_name for image in c1.shown} <= {"blue", "green"}
    assert any(image.class_name == "blue" and image.concept is None for image in c1.shown)
    index = {r["image_id"]: i for i, r in enumerate(rows)}
    for image in c1.shown:  # the photo is the image file; the activation the model pass's
        assert image.activation == pytest.approx(acts["c1"][index[image.image_id]], rel=1e-6)
        with Image.open(by_id[image.image_id]["path"]) as opened:
            assert np.array_equal(image.photo, np.asarray(opened.convert("RGB")))
    assert [image.class_name for image in whole.units["c2"].shown] == ["red"] * 6

    plots = tmp_path / "plots"
    made = cli("evaluate", run_id, "--store", store_path, "--plots", plots)
    assert made.exit_code == 0, made.output
    figure = plots / f"run-{run_id}-whole.png"
    assert figure.is_file() and f"plot -> {figure}" in made.output
    with Image.open(figure) as drawn:
        assert drawn.width > 600 and drawn.height > 400

    out = tmp_path / "report"
    reported = cli("report", "--store", store_path, "--out", out)
    assert reported.exit_code == 0, reported.output
    page = (out / "index.html").read_text()
    assert f'src="img/run-{run_id}-whole.png"' in page and (out / "img" / f"run-{run_id}-whole.png").is_file()
    assert page.index("Panel (paper Fig. 1)") < page.index("Whole picture") < page.index("Activation densities")
    # c'1's row names blue (no concept) and red (concept 2) as outside its concept, with their counts
    assert "<td>c&#x27;1 (concept 1: green)</td><td>100</td><td>40 (40%)</td><td>blue 40, red 20 (concept 2)</td>" in page


def test_the_figure_draws_from_plain_data(tmp_path):
    """plots.whole_picture needs no store: a hand-made WholePicture with an empty unit and many classes."""
    from polysem.figures import plots
    from polysem.method.figure_data import WholeImage, WholePicture, WholeUnit

    photo = np.zeros((8, 8, 3), dtype=np.uint8)
    histogram = [{"class_id": i, "name": f"class {i}", "concept": (i % 3) or None, "n_images": 20 - i,
                  "share": (20 - i) / 210} for i in range(20)]
    units = {"original": WholeUnit("original", "original channel 7", None, [], []),
             "c1": WholeUnit("c1", "c'1 (concept 1: a)", 1, [{}] * 100, histogram,
                             [WholeImage(i, i, f"class {i}", (i % 3) or None, 1.0 - i, photo) for i in range(3)])}
    picture = WholePicture({"run_id": "r1", "channel": 7}, "val", 100, 500, {1: ["a"], 2: ["b"]}, units)
    for name in ("whole.png", "whole.svg"):
        out = plots.whole_picture(picture, tmp_path / name)
        assert out == tmp_path / name and out.stat().st_size > 1000
