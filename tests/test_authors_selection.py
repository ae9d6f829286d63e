"""`polysem evaluate --selection authors` selects the evaluated val images as the authors' get_results.py does
(gradient x activation clamped per position before the spatial sum), `--selection ineq2` (the default) by the
paper's Ineq. 2 on the spatial sums. Known answer: tests.models:mixed_sign_net, whose head weighs channel 0's
positions with mixed signs, so the two rules select different images. Both are checked against an independent
computation here (torch autograd on the PNGs, none of polysem's code), and the authors' per-position pass is
computed once and then read from the store's cache."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import polysem
from polysem.errors import RunError
from polysem.method import evaluation
from polysem.query import Store
from tests.helpers import snapshot
from tests.models import mixed_sign_net

TAU = 0.55  # between the two rules for several images of each concept (checked below)
CLASSES = ("blue", "green", "red")  # folder order = class id = logit
CONCEPTS = {1: "green", 2: "red"}


def make_images(root, split, n, seed):
    """2 x 2 PNGs: blue is B only; green is mostly G with a little R, red the reverse; both with some B."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = np.zeros((2, 2, 3), np.uint8)
            if name == "blue":
                px[..., 2] = rng.integers(120, 256, (2, 2))
            else:
                main, other = (1, 0) if name == "green" else (0, 1)
                px[..., main] = rng.integers(60, 256, (2, 2))
                px[..., other] = rng.integers(0, 70, (2, 2))
                px[..., 2] = rng.integers(20, 120, (2, 2))
            Image.fromarray(px).save(root / split / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A store of mixed_sign_net with train and val ingested and channel 0 split into green / red."""
    from typer.testing import CliRunner

    from polysem.cli import app
    from tests.helpers import ROOT

    base = tmp_path_factory.mktemp("authors")
    data = make_images(base / "data", "train", 8, seed=0)
    make_images(data, "val", 12, seed=1)
    store = base / "store"
    runner = CliRunner()

    def cli(*args):
        import os

        old = os.getcwd()
        os.chdir(ROOT)
        try:
            result = runner.invoke(app, [str(a) for a in args])
        finally:
            os.chdir(old)
        assert result.exit_code == 0, result.output
        return result

    for split in ("train", "val"):
        cli("ingest", data, "--split", split, "--store", store, "--model", "tests.models:mixed_sign_net",
            "--layer", "probe", "--transform", "tests.models:to_tensor")
    run = json.loads(cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", store,
                         "--format", "json").stdout)
    return data, store, run["run_id"]


@pytest.fixture
def copy(made, tmp_path):
    data, store, run_id = made
    shutil.copytree(store, tmp_path / "store")
    return data, tmp_path / "store", run_id


def independent(data, sources):
    """Per concept: (relative attribution by Ineq. 2, by the authors' rule, fractions on c'1, c'2, r) of each val
    image, from autograd on the model (no polysem code). sources: the l-1 channels of c'1, c'2 (the shared one, B,
    has weight 0 in channel 0)."""
    model = mixed_sign_net()
    w = model.probe.weight[0, :, 0, 0].detach()
    out = {}
    for j, name in CONCEPTS.items():
        rows = []
        for path in sorted((data / "val" / name).glob("*.png")):
            x = to_tensor(Image.open(path).convert("RGB"))[None]
            seen: dict = {}
            hook = model.probe.register_forward_hook(lambda m, i, o, seen=seen: seen.update(input=i[0], output=o))
            logits = model(x)
            hook.remove()
            (grad,) = torch.autograd.grad(logits[0, CLASSES.index(name)], seen["output"])
            a = (seen["output"] * grad)[0].detach().double()  # C x H x W, per position
            spatial = a.sum(dim=(1, 2))
            ineq2 = (spatial[0] / spatial.clamp(min=0).sum()).item()
            authors = (a[0].clamp(min=0).sum() / a.clamp(min=0).sum()).item()
            s = seen["input"][0].detach().double().sum(dim=(1, 2))  # spatial sums of the l-1 channels
            c = float((w.double() * s).sum())
            units = [float(sum(w[i].item() * s[i].item() for i in src)) for src in sources]
            rows.append((ineq2, authors, [u / c for u in units], (c - sum(units)) / c))
        out[j] = rows
    return out


def expected(rows, rule):
    chosen = [r for r in rows if r[rule] >= TAU]
    return len(chosen), [float(np.mean([r[2][u] for r in chosen])) for u in range(2)]


def test_the_model_is_a_known_answer_for_both_rules(made):
    data, store, run_id = made
    run = Store(store).reads.run_record(run_id=run_id)
    # green keeps the G input, red the R input; B (weight 0 in channel 0) is shared, so r is 0
    assert run["sources"] == [[1], [0]] and run["shared"] == [2]
    truth = independent(data, run["sources"])
    for rows in truth.values():
        assert min(abs(r[rule] - TAU) for r in rows for rule in (0, 1)) > 1e-3  # no image sits on tau
        # the rules disagree on this model: more images reach tau when each position is clamped first
        assert expected(rows, 1)[0] > expected(rows, 0)[0] > 0


@pytest.mark.parametrize("selection, rule", [("ineq2", 0), ("authors", 1)])
def test_each_selection_equals_the_independent_computation(copy, selection, rule):
    data, store, run_id = copy
    result = polysem.evaluate(store, run_id, tau=TAU, selection=selection, progress=False)
    assert result.selection == selection
    sources = Store(store).reads.run_record(run_id=run_id)["sources"]
    for j, rows in independent(data, sources).items():
        n, fractions = expected(rows, rule)
        got = result.per_concept[j - 1]
        assert got.n_images == n
        assert got.fractions == pytest.approx(fractions, abs=1e-5)
        assert got.frac_residual == pytest.approx(0, abs=1e-6)  # no shared input: r carries nothing
    recorded = Store(store).sql("SELECT DISTINCT selection, tau FROM evaluations").to_pylist()
    assert recorded == [{"selection": selection, "tau": TAU}]


def test_the_two_selections_differ_and_the_default_is_ineq2(copy):
    _, store, run_id = copy
    default = polysem.evaluate(store, run_id, tau=TAU, progress=False)
    authors = polysem.evaluate(store, run_id, tau=TAU, selection="authors", progress=False)
    assert default.selection == "ineq2"
    assert [c.n_images for c in default.per_concept] != [c.n_images for c in authors.per_concept]
    assert default.per_concept[0].fractions != pytest.approx(authors.per_concept[0].fractions)


def test_ineq2_runs_no_model_and_authors_runs_it_once(copy, monkeypatch):
    _, store, run_id = copy
    calls = []
    real = evaluation.compute_clamped_sums

    def counted(*args, **kwargs):
        calls.append(args[4])  # the logit
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "compute_clamped_sums", counted)
    polysem.evaluate(store, run_id, tau=TAU, progress=False)
    assert calls == [] and not (store / "cache" / "authors").exists()
    first = polysem.evaluate(store, run_id, tau=TAU, selection="authors", progress=False)
    assert sorted(calls) == [1, 2]  # one pass per concept class (green, red)
    cached = {p.name: p.stat().st_mtime_ns for p in (store / "cache" / "authors" / "val").iterdir()}
    assert set(cached) == {"class-1.npz", "class-2.npz"}

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the classes are cached")

    monkeypatch.setattr(evaluation, "compute_clamped_sums", no_model)
    monkeypatch.setattr("polysem.method.runs.base_model", no_model)
    again = polysem.evaluate(store, run_id, tau=0.5, selection="authors", progress=False)  # another tau: same cache
    assert again.selection == "authors"
    assert polysem.evaluate(store, run_id, tau=TAU, selection="authors", progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in (store / "cache" / "authors" / "val").iterdir()} == cached


def test_the_cache_holds_the_clamped_sums_per_channel(copy):
    data, store, run_id = copy
    polysem.evaluate(store, run_id, tau=TAU, selection="authors", progress=False)
    with np.load(store / "cache" / "authors" / "val" / "class-1.npz") as cached:
        sums = cached["clamped_sums"]
    sources = Store(store).reads.run_record(run_id=run_id)["sources"]
    rows = independent(data, sources)[1]
    assert sums.shape == (12, 3) and (sums >= 0).all()
    # in image id order; compared as sets of values, as the ids need not follow the file names
    assert sorted(sums[:, 0] / sums.sum(axis=1)) == pytest.approx(sorted(r[1] for r in rows), abs=1e-5)


def test_the_cli_records_and_shows_the_selection(copy, cli, tmp_path):
    _, store, run_id = copy
    shown = cli("evaluate", run_id, "--tau", TAU, "--selection", "authors", "--store", store)
    assert shown.exit_code == 0, shown.output
    assert "selection authors" in " ".join(shown.output.split())  # the title wraps at 80 columns
    as_json = json.loads(cli("evaluate", run_id, "--tau", TAU, "--selection", "authors", "--store", store,
                             "--format", "json").stdout)
    assert as_json["selection"] == "authors"
    runs = json.loads(cli("runs", "--store", store, "--format", "json").stdout)
    assert [r["selection"] for r in runs] == ["authors"]
    table = cli("runs", "--store", store)
    assert "selection" in table.output and "authors" in table.output
    record = cli("runs", run_id, "--store", store)
    assert "authors" in record.output
    assert cli("evaluate", run_id, "--store", store).exit_code == 0  # the default is back to Ineq. 2
    assert [r["selection"] for r in json.loads(cli("runs", "--store", store, "--format", "json").stdout)] == ["ineq2"]


def test_the_report_draws_the_authors_selection(copy, cli, tmp_path):
    _, store, run_id = copy
    assert cli("evaluate", run_id, "--tau", TAU, "--selection", "authors", "--store", store).exit_code == 0
    result = cli("report", "--out", tmp_path / "report", "--store", store)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "get_results.py" in page and f"tau {TAU}" in page


def test_the_plots_draw_the_selected_images(copy, tmp_path):
    _, store, run_id = copy
    result = polysem.evaluate(store, run_id, tau=TAU, selection="authors", plots_dir=tmp_path / "plots",
                              progress=False)
    assert result.plots and result.per_concept[0].n_images == 12


def test_an_unknown_selection_is_refused_and_writes_nothing(copy, capsys, monkeypatch):
    from polysem.cli import main

    _, store, run_id = copy
    before = snapshot(store)
    monkeypatch.setattr("sys.argv", ["polysem", "evaluate", run_id, "--selection", "mine", "--store", str(store)])
    with pytest.raises(SystemExit) as stopped:
        main()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("Error: ")
    assert "'mine' is not one of 'ineq2', 'authors'" in lines[0]
    with pytest.raises(RunError, match="`selection` must be ineq2"):
        polysem.evaluate(store, run_id, selection="mine")
    assert snapshot(store) == before


def test_old_evaluations_read_as_ineq2(tmp_path, cli):
    """Format-2 stores (before `selection`) are migrated: their evaluations used Ineq. 2."""
    from tests.test_migrations import FIXTURE, RUN

    store = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", store)
    shown = json.loads(cli("runs", "--store", store, "--format", "json").stdout)  # a private, migrated copy
    assert [r["selection"] for r in shown] == ["ineq2"]
    assert cli("screen", "--concepts", "--store", store).exit_code == 0  # migrates the store itself
    rows = Store(store).sql("SELECT DISTINCT run_id, selection FROM evaluations").to_pylist()
    assert rows == [{"run_id": RUN, "selection": "ineq2"}]
