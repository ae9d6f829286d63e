"""Disentanglement: known answers, exact equivalence, the rho search, artifacts and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from polysem.query import Store

from polysem.constants import RHO_GRID
from polysem.method.disentangling import DisentangledConv, SourceSplit, split_sources
from polysem.method.runs import (
    ChannelRequest,
    disentangle,
    disentangle_channels,
    load_model,
)
from tests.helpers import TINY, assert_refused, assert_refused_last_line, make_image_folder, map_logits


def runs_count(store_path):
    return Store(store_path).sql("SELECT count(*) AS n FROM runs").to_pylist()[0]["n"]


def test_split_sources_follows_ineq_5():
    arv1 = np.array([5.0, 1.0, 2.0, -1.0, 0.0, 4.0])
    arv2 = np.array([1.0, 5.0, 2.0, -2.0, 0.0, 3.0])
    split = split_sources([arv1, arv2], 0.5)
    # 0: .5*5 > 1 -> 1;  1: .5*5 > 1 -> 2;  2: 1 > 2 no, 1 > 2 no -> shared;  3: -.5 > -2 -> 1
    # 4: 0 > 0 no -> shared;  5: 2 > 3 no, 1.5 > 4 no -> shared
    assert split == SourceSplit(((0, 3), (1,)), (2, 4, 5))
    assert split_sources([arv1, arv2], 1.0) == SourceSplit(((0, 3, 5), (1,)), (2, 4))
    # both conditions can hold for negative entries: concept 1 wins
    assert split_sources([np.array([-1.0]), np.array([-1.0])], 0.5) == SourceSplit(((0,), ()), ())


def test_known_answer_split_and_evaluation(cli, colour_store):
    result = cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", colour_store,
                 "--format", "json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert {"run_id", "created_at", "channel", "concept1", "concept2", "rho", "objective", "sources1", "sources2",
            "shared", "max_logit_diff", "artifact", "polysem_version", "parameters"} <= set(run)
    assert (run["sources1"], run["sources2"], run["shared"]) == ([1], [0], [2])  # G detector / R detector / B
    assert run["concept1"] == [1] and run["concept2"] == [2] and run["max_logit_diff"] < 1e-5
    evaluation = cli("evaluate", run["run_id"], "--store", colour_store, "--format", "json")
    assert evaluation.exit_code == 0, evaluation.output
    numbers = json.loads(evaluation.stdout)
    green, red = numbers["concept1"], numbers["concept2"]
    assert green["n_images"] == 4 and red["n_images"] == 4
    assert green["frac1"] > 0.95 and green["frac2"] < 0.05
    assert red["frac2"] > 0.95 and red["frac1"] < 0.05
    assert abs(green["frac_residual"]) < 1e-6  # r keeps only the B input, which channel 0 ignores
    stored = Store(colour_store).sql("SELECT concept, n_images, fractions[1] AS frac1 FROM evaluations "
                                       "ORDER BY concept").to_pylist()
    assert stored == [{"concept": 1, "n_images": 4, "frac1": pytest.approx(green["frac1"])},
                      {"concept": 2, "n_images": 4, "frac1": pytest.approx(red["frac1"])}]
    listed = cli("runs", "--store", colour_store, "--format", "json")
    assert json.loads(listed.stdout)[0]["fractions"][0][0] == pytest.approx(green["frac1"])


@pytest.fixture
def resnet_store(fixture_store):
    return fixture_store("resnet50").store


def original_and_new_logits(store, run_id, images):
    from polysem.method.runs import base_model

    original = base_model(Store(store))[0]
    with torch.no_grad():
        return original(images), load_model(store, run_id)(images)


def test_resnet50_logits_unchanged_for_any_channel_and_class_sets(resnet_store):
    run = disentangle(resnet_store, 1234, concept1=["a", "b"], concept2=[2], force=True, progress=False)
    assert run.max_logit_diff <= 1e-4 * 100
    torch.manual_seed(5)
    images = torch.randn(4, 3, 64, 64)
    old, new = original_and_new_logits(resnet_store, run.run_id, images)
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4 * float(old.abs().max()))
    # several channels in one model, a fixed rho
    runs = disentangle_channels(resnet_store, [ChannelRequest(7, [[0], [1]]), ChannelRequest(2047, [[2], [0, 1]])],
                                rho=0.6, force=True, progress=False)
    assert len({r.group_id for r in runs}) == 1 and [r.rho for r in runs] == [0.6, 0.6]
    old, new = original_and_new_logits(resnet_store, runs[1].run_id, images)
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4 * float(old.abs().max()))
    layer = load_model(resnet_store, runs[0].run_id).layer4[2].conv3
    assert layer.expanded.out_channels == 2048 + 4 and layer.channels == [7, 2047]


@pytest.fixture
def tiny_store(fixture_store):
    return fixture_store("tiny").store


def test_layer_with_bias_keeps_logits_and_artifact_survives_reopen(tiny_store):
    run = disentangle(tiny_store, 3, concept1=[0], concept2=[1, 2], force=True, progress=False)
    torch.manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    old, new = original_and_new_logits(tiny_store, run.run_id, images)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)
    # rebuilt from a fresh Store object: the layer is exactly the recorded split of the original weights
    from tests.models import tiny_net

    layer = load_model(Store(tiny_store), run.run_id).probe
    original = tiny_net().probe
    w = original.weight.detach()[3]
    expected_c1, expected_c2, expected_r = w.clone(), w.clone(), w.clone()
    expected_c1[run.sources2] = 0
    expected_c2[run.sources1] = 0
    expected_r[run.sources1 + run.sources2] = 0
    torch.testing.assert_close(layer.expanded.weight[3], expected_c1)
    torch.testing.assert_close(layer.expanded.weight[5], expected_c2)
    torch.testing.assert_close(layer.expanded.weight[6], expected_r)
    torch.testing.assert_close(layer.expanded.bias[[3, 5, 6]], original.bias.detach()[[3, 3, 3]])
    saved = torch.load(Store(tiny_store).path / run.artifact, weights_only=True)
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(layer.state_dict()[key], value)


def brute_force_eq6(maps1, maps2, conv, channel, arv1, arv2, objective):
    """Per rho and per image, with a freshly built DisentangledConv: the literal Eq. 6."""
    scores = []
    for rho in RHO_GRID:
        split = split_sources([arv1, arv2], rho)
        layer = DisentangledConv(conv, [channel], [split])
        c1, c2 = layer.unit_index(channel, "c1"), layer.unit_index(channel, "c2")
        total = 0.0
        for maps, own, other in ((maps1, c1, c2), (maps2, c2, c1)):
            ratios = []
            for x in maps:
                out = layer.expanded(torch.from_numpy(x[None]))[0].double()
                f = out.abs() if objective == "abs" else out.clamp(min=0)
                if objective == "abs":
                    ratios.append(float(f[own].sum() / f[other].sum()))
                else:
                    ratios.append(float(f[own].sum() / (f[other].sum() + 1e-5)))
            total += np.mean(ratios)
        scores.append(total)
    return scores


@pytest.mark.parametrize("objective", ["abs", "positive"])
def test_rho_search_equals_brute_force(tiny_store, objective):
    from polysem.method.features import class_records
    from polysem.util.images import ImageRecords
    from tests.models import small, tiny_net

    run = disentangle(tiny_store, 1, concept1=[0], concept2=[2], objective=objective, force=True, progress=False)
    store = Store(tiny_store)
    recorded = store.sql("SELECT rho, objective_value FROM rho_scores WHERE run_id = ? ORDER BY rho",
                           [run.run_id]).to_pylist()
    net = tiny_net().eval()
    maps = []
    for class_id in (0, 2):
        records = class_records(store, class_id, "train")
        images = torch.stack([ImageRecords(records, small)[i][1] for i in range(len(records))])
        with torch.no_grad():
            maps.append(net.stem(images).numpy())
    arv1 = np.array(store.sql("SELECT arv FROM concept_arv(1, [0])").to_pylist()[0]["arv"])
    arv2 = np.array(store.sql("SELECT arv FROM concept_arv(1, [2])").to_pylist()[0]["arv"])
    expected = brute_force_eq6(maps[0], maps[1], net.probe, 1, arv1, arv2, objective)
    assert [r["rho"] for r in recorded] == list(RHO_GRID)
    # a rho that leaves a concept without a source of its own is skipped, and only such a rho
    usable = [bool(all(split_sources([arv1, arv2], rho).sources)) for rho in RHO_GRID]
    assert any(usable) and [r["objective_value"] is not None for r in recorded] == usable
    np.testing.assert_allclose([r["objective_value"] for r, ok in zip(recorded, usable) if ok],
                               [e for e, ok in zip(expected, usable) if ok], rtol=1e-4)
    assert run.rho == RHO_GRID[int(np.argmax([e if ok else -np.inf for e, ok in zip(expected, usable)]))]


def test_feature_maps_are_cached(tiny_store, monkeypatch):
    disentangle(tiny_store, 1, concept1=[0], concept2=[2], force=True, progress=False)
    assert sorted(p.name for p in (Store(tiny_store).path / "cache" / "features" / "probe" / "train").iterdir()) == ["class-0.npz", "class-2.npz"]

    def no_model(*args, **kwargs):
        raise AssertionError("the cached classes must not run the model again")

    monkeypatch.setattr("polysem.method.features.compute_feature_maps", no_model)
    again = disentangle(tiny_store, 1, concept1=[0], concept2=[2], objective="positive", force=True, progress=False)
    assert again.run_id and runs_count(tiny_store) == 2


def test_run_activations_equal_the_model(tiny_store):
    """The SQL activations of c'1, c'2, r (linear in input_sum) equal the disentangled model's own."""
    from PIL import Image

    from tests.models import small

    run = disentangle(tiny_store, 2, concept1=[1], concept2=[0], force=True, progress=False)
    model = load_model(tiny_store, run.run_id)
    layer = model.probe
    rows = Store(tiny_store).sql("SELECT * FROM run_activations(?) ORDER BY image_id", [run.run_id]).to_pylist()
    assert len(rows) == 6 and {r["concept"] for r in rows} == {1, 2}
    for row in rows:
        image = small(Image.open(row["path"]).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            out = layer.expanded(model.stem(image))[0].sum(dim=(1, 2))
        for key, unit in (("activation1", "c1"), ("activation2", "c2"), ("activation_residual", "r")):
            assert row[key] == pytest.approx(float(out[layer.unit_index(2, unit)]), rel=1e-4, abs=1e-4)
        assert row["activation"] == pytest.approx(float(out[2] + out[layer.unit_index(2, "c2")] - out[layer.unit_index(2, "r")]), rel=1e-4, abs=1e-4)


def test_evaluate_writes_plots(cli, colour_store, tmp_path):
    run = json.loads(cli("disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--store", colour_store,
                         "--format", "json").stdout)
    result = cli("evaluate", run["run_id"], "--plots", tmp_path / "plots", "--store", colour_store)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == [f"run-{run['run_id']}-{kind}.png" for kind in ("density", "panel", "top-c1", "top-c2", "top-original", "whole")]
    assert all(p.stat().st_size > 10_000 for p in (tmp_path / "plots").iterdir())


def test_from_screen_builds_one_model(cli, colour_store):
    result = cli("disentangle", "--from-screen", "--limit", 3, "--store", colour_store, "--format", "json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)  # the colour model has one candidate channel
    assert run["channel"] == 0 and run["concept1"] == [1] and run["concept2"] == [2]


# -- bad input: one line, exit code 2, nothing recorded ------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["--channel", 3, "--concept1", 1, "--concept2", 2], ["channel 3 is out of range", "0..2"]),
    (["--channel", 0, "--concept1", "purple", "--concept2", 2], ["unknown class 'purple'", "polysem classes"]),
    (["--channel", 0, "--concept1", 9, "--concept2", 2], ["class id 9 is out of range"]),
    (["--channel", 0, "--concept1", "1,2", "--concept2", "red"], ["class 2 is in two concepts"]),
    (["--channel", 1, "--concept1", "blue", "--concept2", "red"], ["not relevant", "class 2", "--force"]),
    (["--channel", 0, "--concept1", 1, "--concept2", 2, "--rho", "1.5"], ["--rho must be in (0, 1]"]),
    (["--channel", 0, "--concept1", 1, "--concept2", 2, "--objective", "l2"], ["unknown --objective"]),
    (["--channel", 0, "--concept1", 1], ["give --channel and two or more concepts"]),
])
def test_disentangle_bad_input(cli, colour_store, args, fragments):
    assert_refused(cli("disentangle", *args, "--store", colour_store), *fragments)
    assert runs_count(colour_store) == 0
    assert not (colour_store / "artifacts").exists()


def test_force_proceeds_with_a_warning(cli, colour_store):
    args = ["disentangle", "--channel", 1, "--concept1", "blue", "--concept2", "red", "--force", "--store", colour_store]
    # channel 1 reads only B: at every rho B goes to blue and red keeps no source of its own, so c'2 would be r
    assert_refused_last_line(cli(*args), "at every rho of the grid some concept has no l-1 channel of its own",
                             "--rho VALUE --force")
    assert_refused_last_line(cli(*[a for a in args if a != "--force"], "--rho", "0.5"), "not relevant")
    assert runs_count(colour_store) == 0
    result = cli(*args, "--rho", "0.5")
    assert result.exit_code == 0, result.output
    assert "Warning: channel 1 is not relevant (tau 0.03, p 0.75) for class 2" in result.output
    assert "Warning: at rho 0.5 concept 2 of channel 1 has no l-1 channel of its own" in result.output
    assert runs_count(colour_store) == 1
    recorded = Store(colour_store).sql("SELECT warnings FROM runs").to_pylist()[0]["warnings"]
    assert len(recorded) == 1 and "concept 2 of channel 1 has no l-1 channel of its own" in recorded[0]


def test_concept_without_train_images(cli, tmp_path):
    root = make_image_folder(tmp_path / "d", "train", {"a": 3, "b": 3, "c": 3})
    store = tmp_path / "s"
    assert cli("ingest", root, "--store", store, *TINY, "--classes", "0,1").exit_code == 0
    assert_refused(cli("disentangle", "--channel", 0, "--concept1", 0, "--concept2", 2, "--store", store),
                   "class 2 has no train images")


def test_evaluate_bad_input(cli, colour_store, tmp_path):
    assert_refused(cli("evaluate", "nope", "--store", colour_store), "unknown run id 'nope'")
    root = map_logits(make_image_folder(tmp_path / "d", "train", {"a": 4, "b": 4}))
    store = tmp_path / "s"
    assert cli("ingest", root, "--store", store, *TINY).exit_code == 0
    run = disentangle(store, 0, concept1=[0], concept2=[1], force=True, progress=False)
    assert_refused(cli("evaluate", run.run_id, "--store", store), "no val images", "--split val")


def test_moved_images(cli, tmp_path):
    from tests.helpers import COLOUR, make_colour_images

    root = make_colour_images(tmp_path / "colours", "train", 4)
    store = tmp_path / "s"
    assert cli("ingest", root, "--store", store, *COLOUR).exit_code == 0
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    result = cli("disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--store", store)
    assert_refused(result, "is missing", str(root / "train"), "--data")
    assert runs_count(store) == 0
    ok = cli("disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--store", store, "--data", moved)
    assert ok.exit_code == 0, ok.output


def test_a_model_failing_the_logit_check_is_not_recorded(cli, colour_store, monkeypatch):
    monkeypatch.setattr("polysem.method.runs.LOGIT_TOLERANCE", -1.0)  # no model can pass now
    result = cli("disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--store", colour_store)
    assert result.exit_code == 2
    assert "changes the logits by" in result.output and "nothing recorded" in result.output
    assert runs_count(colour_store) == 0 and not (colour_store / "artifacts").exists()
