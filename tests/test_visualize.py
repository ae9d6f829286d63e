"""Feature visualisation on the known-answer OpponentColourNet, the Fourier inverse,
determinism, the record in `visualizations`, and the receptive field against hand-computed boxes."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from polysem.query import Store
from torch import nn

from polysem.errors import StoreBusy
from polysem.method.receptive_field import receptive_fields
from polysem.method.visualize import FourierImage, augment, visualize


@pytest.fixture
def opponent_run(fixture_store):
    """A store of OpponentColourNet (train + val) and a run splitting channel 0 = R + G into green / red
    (sources: the G detector / the R detector), this test's own copy."""
    built = fixture_store("opponent-colour-run")
    return built.store, built.info["run_id"]


def mean_colour(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=float).reshape(-1, 3).mean(0) / 255


@pytest.mark.parametrize("method", ["maco", "fourier"])
def test_known_answer_each_new_channel_shows_its_concept(opponent_run, method):
    store, run_id = opponent_run
    result = visualize(store, run_id, method=method, steps=512, size=16, seed=0, device="cpu", progress=False)
    c1, c2, original = result.units["c1"], result.units["c2"], result.units["original"]
    # c'1's image drives c'1 far more than c'2 and is green; c'2's the reverse and red
    assert c1.selectivity > 3 and c1.activations["c1"] > 3 * c1.activations["c2"]
    assert c2.selectivity > 3 and c2.activations["c2"] > 3 * c2.activations["c1"]
    r, g, b = mean_colour(c1.image)
    assert g > r + 0.3 and g > b + 0.2
    r, g, b = mean_colour(c2.image)
    assert r > g + 0.3 and r > b + 0.2
    # the original channel's image (yellow: R and G) drives both
    acts = original.activations
    assert acts["c1"] > 0.3 * acts["original"] and acts["c2"] > 0.3 * acts["original"]
    assert original.activation == pytest.approx(acts["c1"] + acts["c2"] - acts["r"], rel=1e-5)
    rows = Store(store).sql("SELECT * FROM visualizations WHERE run_id = ? AND method = ? ORDER BY unit",
                              [run_id, method]).to_pylist()
    assert [r["unit"] for r in rows] == ["c1", "c2", "original", "r"]
    assert all((Path(store) / r["image"]).is_file() and r["failure"] is None for r in rows[:3])
    # r has no weights here (the split gave R and G to the concepts, B's weight is 0): no picture, and why
    assert rows[3]["image"] is None and "no weights" in rows[3]["failure"] and result.units["r"].failed
    assert rows[0]["selectivity"] == pytest.approx(c1.selectivity)


@pytest.mark.parametrize("method", ["maco", "fourier"])
def test_deterministic_for_a_seed(opponent_run, method):
    store, run_id = opponent_run
    runs, pixels = [], []
    for seed in (3, 3, 4):  # read each run's images before the next run replaces them
        runs.append(visualize(store, run_id, method=method, steps=8, size=12, seed=seed, device="cpu", progress=False))
        pixels.append([np.asarray(Image.open(runs[-1].units[u].image)) for u in ("original", "c1", "c2")])  # r: no weights
    assert all(np.array_equal(a, b) for a, b in zip(pixels[0], pixels[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(pixels[0], pixels[2]))
    # a rerun of the same configuration replaces its rows and images
    n = Store(store).sql("SELECT count(*) AS n FROM visualizations WHERE method = ? AND steps = 8 AND seed = 3",
                           [method]).column("n")[0].as_py()
    assert n == 4
    assert not Path(runs[0].units["c1"].image).exists() and Path(runs[1].units["c1"].image).exists()


def test_fourier_parameterisation_inverts_a_known_image():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 15, 15) * 0.9 + 0.05  # odd size: the rfft's last column is not a Nyquist one
    assert torch.allclose(FourierImage.from_image(image)(), image, atol=1e-5)
    grey = torch.rand(1, 1, 16, 16) * 0.9 + 0.05
    assert torch.allclose(FourierImage.from_image(grey)(), grey, atol=1e-5)


def test_augment_is_identity_free_but_keeps_shape_and_range():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 20, 20)
    for method in ("maco", "fourier"):
        views = augment(images, method, generator)
        assert views.shape == images.shape and views.min() >= 0 and views.max() <= 1


def test_a_channel_of_the_stored_model_and_json(cli, opponent_run):
    store, _ = opponent_run
    result = cli("visualize", "--channel", 1, "--steps", 64, "--size", 12, "--method", "fourier", "--device", "cpu",
                 "--store", store, "--format", "json")
    assert result.exit_code == 0, result.output
    units = json.loads(result.stdout)
    assert list(units) == ["original"] and units["original"]["activation"] > 0
    r, g, b = mean_colour(units["original"]["image"])
    assert b > r and b > g  # channel 1 is the blue detector
    row = Store(store).sql("SELECT * FROM visualizations WHERE run_id IS NULL").to_pylist()[0]
    assert row["channel"] == 1 and row["act_c1"] is None


def test_cli_errors_are_one_line(cli, opponent_run):
    store, run_id = opponent_run
    for args, text in (((run_id, "--channel", 0), "one of the two"), (("--channel", 9), "out of range"),
                       (("nope",), "unknown run id"), ((run_id, "--steps", 0), "--steps")):
        result = cli("visualize", *args, "--store", store)
        assert result.exit_code == 2 and result.stderr.startswith("Error: ") and text in result.stderr, result.output
    assert cli("visualize", run_id, "--method", "lucid", "--store", store).exit_code == 2  # refused by the parser


def test_a_failed_record_leaves_the_store_as_it_was(opponent_run, monkeypatch):
    store, run_id = opponent_run
    folder = Path(store) / "artifacts" / "visualizations" / run_id
    before_files = sorted(folder.glob("*")) if folder.exists() else []
    before_rows = Store(store).sql("SELECT count(*) AS n FROM visualizations").column("n")[0].as_py()
    real_connect = Store.connect

    def busy(self, write=False, create=False):
        if write:
            raise StoreBusy("busy")
        return real_connect(self, write, create)

    monkeypatch.setattr(Store, "connect", busy)
    with pytest.raises(StoreBusy):
        visualize(store, run_id, method="fourier", steps=2, size=12, seed=99, device="cpu", progress=False)
    monkeypatch.undo()
    assert (sorted(folder.glob("*")) if folder.exists() else []) == before_files
    assert Store(store).sql("SELECT count(*) AS n FROM visualizations").column("n")[0].as_py() == before_rows


def test_forward_stops_at_the_layer_and_leaves_no_hook(opponent_run):
    from polysem.method.runs import load_model
    from polysem.util.hooks import forward_to

    store, run_id = opponent_run
    model = load_model(store, run_id)
    ran = []
    model.head.register_forward_pre_hook(lambda m, i: ran.append(1))
    forward_to(model, model.probe.expanded, torch.rand(1, 3, 4, 4))
    assert not ran and not model.probe.expanded._forward_hooks
    with pytest.raises(RuntimeError):
        forward_to(model, model.probe.expanded, torch.rand(1, 5, 4, 4))
    assert not model.probe.expanded._forward_hooks


def test_receptive_field_of_two_3x3_stride_2_convs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1))
    # position k of the second conv sees rows 4k-3 .. 4k+3 of the input (size 7, stride 4), clipped
    boxes = receptive_fields(model, model[2], (1, 16, 16), [(0, 0), (2, 1), (3, 3)])
    assert boxes == {(0, 0): (0, 0, 4, 4), (2, 1): (5, 1, 12, 8), (3, 3): (9, 9, 16, 16)}


def test_receptive_field_of_the_example_model_through_max_pools():
    from examples.fashion_mnist import FashionCNN

    model = FashionCNN().eval()
    # conv3 p1, pool 2, conv3 p1, pool 2, conv3 p1, 1x1: size 18, stride 4, position 0 starts at -7
    boxes = receptive_fields(model, model.narrow, (1, 28, 28), [(0, 0), (3, 3), (6, 2)])
    assert boxes == {(0, 0): (0, 0, 11, 11), (3, 3): (5, 5, 23, 23), (6, 2): (17, 1, 28, 19)}


def test_evaluate_panel_and_report_in_a_browser(cli, opponent_run, tmp_path):
    store, run_id = opponent_run
    visualize(store, run_id, method="fourier", steps=64, size=16, device="cpu", progress=False)
    result = cli("evaluate", run_id, "--store", store, "--plots", tmp_path / "plots", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / f"run-{run_id}-panel.png").is_file()
    assert (tmp_path / "plots" / f"run-{run_id}-visualizations.png").is_file()
    result = cli("report", "--store", store, "--out", tmp_path / "report", "--device", "cpu")
    assert result.exit_code == 0, result.output
    index = tmp_path / "report" / "index.html"
    page = index.read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert f"run {run_id}" in page and "green" in page and "selectivity" in page
    check_in_browser(index, tmp_path)


def check_in_browser(index: Path, tmp_path: Path) -> None:
    """Headless Chromium, started once, loads the page from disk: every image loads and a screenshot is not blank."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "chromium is not installed: `make system-packages` installs it"
    # the page has no script; this copy adds one that counts images that did not load (it draws nothing)
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", "<script>window.addEventListener('load', () => {"
                     "const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0));"
                     "document.body.setAttribute('data-images', document.images.length + '/' + bad.length);"
                     "});</script></body>"))
    shot = tmp_path / "shot.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=5000", "--user-data-dir=" + str(tmp_path / "chromium-profile")]
    dom = subprocess.run(flags + ["--dump-dom", f"--screenshot={shot}", "--window-size=1200,1600", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    counts = dom.split('data-images="')[1].split('"')[0]
    total, broken = map(int, counts.split("/"))
    assert total >= 4 and broken == 0, counts
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20


def test_the_report_draws_each_run_with_its_own_parameters_and_warns_nothing(opponent_run, tmp_path):
    import warnings

    from polysem.method.verification import verify
    from polysem.reporting import evaluate, write_report

    store, run_id = opponent_run
    evaluate(store, run_id, tau=0.005)
    verify(store, run_id, tau=0.02, p=0.7, gamma=0.4, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = write_report(store, tmp_path / "report", device="cpu")
    assert [str(w.message) for w in caught] == []
    page = index.read_text()
    assert "densities and fractions at tau 0.005 (the run's recorded evaluation)" in page
    assert "Verification: resolved" in page and "tau 0.02, p 0.7, gamma 0.4" in page
    assert "serves concept 1 only, monosemantic" in page


@pytest.fixture
def dark_run(fixture_store):
    """DarkOpponentNet (every detector off on grey, probe channel 3 never above 0) with channel 0 split into
    green / red, train images only."""
    built = fixture_store("dark-opponent-run")
    return built.store, built.info["run_id"]


def _greenish(path) -> bool:
    r, g, b = mean_colour(path)
    return g > r + 0.2 and g > b + 0.2


def _reddish(path) -> bool:
    r, g, b = mean_colour(path)
    return r > g + 0.2 and r > b + 0.2


@pytest.mark.parametrize("method", ["maco", "fourier"])
def test_default_steps_at_the_models_size_find_each_concept(opponent_run, method):
    """No size given: the store's images' side after its transform (8 pixels, as make_colour_images writes them)."""
    store, run_id = opponent_run
    result = visualize(store, run_id, method=method, device="cpu", progress=False)
    assert result.first().size == 8 and Image.open(result.units["c1"].image).size == (8, 8)
    assert _greenish(result.units["c1"].image) and _reddish(result.units["c2"].image)
    assert [u for u, v in result.units.items() if v.failed] == ["r"]  # r: no weights, nothing to show
    assert all(result.units[u].activation > 0 for u in ("original", "c1", "c2"))


def test_a_dead_start_is_restarted_from_a_store_image(dark_run):
    """Fourier starts from an almost grey image, on which every detector of DarkOpponentNet is off: every unit
    has a zero gradient from the first step. Each restarts from the store image it activates most on."""
    store, run_id = dark_run
    result = visualize(store, run_id, method="fourier", size=8, device="cpu", progress=False)
    c1, c2 = result.units["c1"], result.units["c2"]
    assert c1.restarted and c2.restarted and not c1.failed
    assert _greenish(c1.image) and _reddish(c2.image)
    assert c1.activations["c1"] > 0 and c2.activations["c2"] > 0
    # without the restart the same optimisation never moves: zero gradient at every step
    from polysem.method.runs import load_model
    from polysem.method.visualize import optimise_units, run_target

    target = run_target(load_model(store, run_id), "probe", 0, run_id)
    _, live = optimise_units(target, channels=3, method="fourier", steps=16, size=8, progress=False)
    assert live == [False, False, False, False]


def test_a_unit_that_never_activates_is_reported_failed_and_not_drawn(cli, dark_run):
    store, _ = dark_run
    args = ("visualize", "--channel", 3, "--method", "fourier", "--steps", 16, "--size", 8, "--device", "cpu",
            "--store", store)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 100 for line in result.stdout.splitlines()), result.stdout
    failed = " ".join(result.stdout.split("failed (below)")[1].split()).split("failed: ")[1:]  # an entry per unit
    assert len(failed) == 1 and "original never activated" in failed[0] and "--seeds" in failed[0], result.stdout
    assert "`" not in failed[0]
    row = Store(store).sql("SELECT * FROM visualizations WHERE channel = 3").to_pylist()
    assert len(row) == 1 and row[0]["image"] is None and "never activated" in row[0]["failure"]
    assert not (Path(store) / "artifacts" / "visualizations" / "channel-3").exists() or not any(
        (Path(store) / "artifacts" / "visualizations" / "channel-3").iterdir())
    units = json.loads(cli(*args, "--format", "json").stdout)
    assert units["original"]["failed"] is True and units["original"]["image"] is None
    assert "never activated" in units["original"]["reason"]


def test_several_seeds_recorded_and_drawn_side_by_side(cli, opponent_run, tmp_path):
    from polysem.figures.plots import visualizations
    from polysem.method.figure_data import visualisation_images
    from polysem.method.visualize import latest_visualizations

    store, run_id = opponent_run
    base = ("visualize", run_id, "--method", "fourier", "--steps", 8, "--size", 8, "--device", "cpu", "--store", store)
    per_seed = json.loads(cli(*base, "--seeds", "0,1,2", "--format", "json").stdout)
    assert [next(iter(r.values()))["seed"] for r in per_seed] == [0, 1, 2]
    pixels = [np.asarray(Image.open(r["c1"]["image"])) for r in per_seed]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    rows = latest_visualizations(Store(store), run_id)
    assert sorted({r["seed"] for r in rows}) == [0, 1, 2] and len(rows) == 12
    out = visualizations({"run_id": run_id}, rows, visualisation_images(Store(store), rows), {}, tmp_path / "three.png")
    table = cli(*base, "--seeds", "4,5")
    assert table.exit_code == 0 and "seeds 4, 5" in table.stdout and " seed " in table.stdout, table.output
    one = cli(*base, "--seed", "7")  # --seed still gives one seed, the dict of units
    assert one.exit_code == 0 and "seed 7" in one.stdout
    rows = latest_visualizations(Store(store), run_id)
    assert {r["seed"] for r in rows} == {7}
    single = visualizations({"run_id": run_id}, rows, visualisation_images(Store(store), rows), {}, tmp_path / "one.png")
    assert Image.open(out).height > 2 * Image.open(single).height
    for bad, text in (("0,0", "repeats"), ("a,1", "--seeds"), (",", "--seeds")):
        result = cli(*base, "--seeds", bad)
        assert result.exit_code == 2 and result.stderr.startswith("Error: ") and text in result.stderr, result.output


def test_without_a_size_a_store_of_oblong_images_is_asked_for_one(cli, tmp_path):
    from tests.helpers import make_image_folder, snapshot

    data = make_image_folder(tmp_path / "data", "train", {"a": 2, "b": 2, "c": 2}, size=(12, 20))  # 20 wide, 12 high
    store = tmp_path / "s"
    made = cli("ingest", data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
               "--transform", "tests.models:to_tensor")
    assert made.exit_code == 0, made.output
    before = snapshot(store)
    result = cli("visualize", "--channel", 0, "--steps", 1, "--device", "cpu", "--store", store)
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "Error: the store's images are 12 x 20 pixels after its transform; give --size (a side from 8 to 1024 the "
        "model accepts)"], result.output
    assert snapshot(store) == before
    assert cli("visualize", "--channel", 0, "--steps", 1, "--size", 16, "--device", "cpu", "--store", store).exit_code == 0
