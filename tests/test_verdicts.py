"""`polysem verify` answers the question users ask: does each new unit c'_j serve its concept (relevant for a
class of concept j and none of another) and is it monosemantic (no two relevant classes below gamma)?
Known answers: the verdict rule on hand-written facts, and three hand-built models whose splits resolve,
keep the other concept's class, or pick up an unrelated class with a dissimilar ARV."""

import json

import pytest

from polysem.query import Store
from tests.helpers import make_colour_images

YELLOW = {"green": (0, 255, 0), "red": (255, 0, 0), "yellow": (255, 255, 0)}
RGB = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


@pytest.mark.parametrize("relevant, cosines, serves, monosemantic, reason", [
    ([[1], [2]], [None, None], [True, True], [True, True], ["serves concept 1 only", "serves concept 2 only"]),
    ([[1], [1, 2]], [None, 0.9], [True, False], [True, True], ["serves", "also relevant for class 1 of another"]),
    ([[0, 1], [2]], [0.1, None], [True, True], [False, True], ["ARV cosine 0.1 < gamma 0.5", "serves"]),
    ([[], [2]], [None, None], [False, True], [True, True], ["relevant for no class of concept 1", "serves"]),
    ([[1, 3], [2]], [0.7, None], [True, True], [True, True], ["serves concept 1 only", "serves"]),  # 3: no concept
])
def test_the_verdict_rule(colour_store, relevant, cosines, serves, monosemantic, reason):
    rows = Store(colour_store).reads.verdicts_of(concepts=[[1], [2]], relevant_classes=relevant,
                                                 min_cosines=cosines, gamma=0.5).to_pylist()
    assert [r["serves"] for r in rows] == serves and [r["monosemantic"] for r in rows] == monosemantic
    assert all(part in r["reason"] for r, part in zip(rows, reason, strict=True))


def split_and_verify(cli, tmp_path, model, colours, concept1, concept2):
    data = make_colour_images(tmp_path / "data", "train", 6, noise=4, colours=colours)
    make_colour_images(data, "val", 4, seed=1, noise=4, colours=colours)
    store = tmp_path / "store"
    for split in ("train", "val"):
        result = cli("ingest", data, "--split", split, "--store", store, "--model", f"tests.models:{model}",
                     "--layer", "probe", "--transform", "tests.models:to_tensor")
        assert result.exit_code == 0, result.output
    made = cli("disentangle", "--channel", 0, "--concept1", concept1, "--concept2", concept2, "--store", store,
               "--format", "json")
    assert made.exit_code == 0, made.output
    run_id = json.loads(made.stdout)["run_id"]
    shown = cli("verify", run_id, "--store", store)
    assert shown.exit_code == 0, shown.output
    verdict = json.loads(cli("verify", run_id, "--store", store, "--format", "json").stdout)
    summary = Store(store).sql("SELECT resolved FROM run_summary WHERE run_id = $r", {"r": run_id}).to_pylist()
    return run_id, shown.output, verdict, summary[0]["resolved"], store


def test_a_unit_that_keeps_the_other_concepts_class_is_not_resolved(cli, tmp_path):
    run_id, shown, verdict, resolved, store = split_and_verify(cli, tmp_path, "yellow_net", YELLOW, "green,yellow",
                                                               "red")
    c1, c2 = verdict["channels"]
    assert c1["serves"] and c1["monosemantic"] and c1["own_classes"] == [0, 2]  # green, yellow
    assert c2["own_classes"] == [1] and c2["other_concept_classes"] == [2] and not c2["serves"]
    assert verdict["resolved"] is False and resolved is False
    assert f"run {run_id}: not resolved: c2: also relevant for class 2 of another concept" in shown
    runs = json.loads(cli("runs", "--store", store, "--format", "json").stdout)
    assert [r["resolved"] for r in runs] == [False]
    import polysem

    assert polysem.verify(store, run_id).resolved is False


def test_a_unit_that_picks_up_an_unrelated_dissimilar_class_is_not_monosemantic(cli, tmp_path):
    _, shown, verdict, resolved, _ = split_and_verify(cli, tmp_path, "rgb_sum_net", RGB, "green", "red")
    c1, c2 = verdict["channels"]
    # the B input goes to c'1 (its noise is larger on green images): c'1 stays relevant for blue, whose ARV
    # under c'1 is orthogonal to green's
    assert c1["own_classes"] == [1] and c1["unrelated_classes"] == [0] and c1["other_concept_classes"] == []
    assert c1["serves"] and not c1["monosemantic"] and c1["min_cosine"] < 0.1
    assert "two of its classes have ARV cosine" in c1["reason"] and "< gamma 0.5" in c1["reason"]
    assert c2["serves"] and c2["monosemantic"] and c2["own_classes"] == [2]
    assert verdict["resolved"] is False and resolved is False
    assert "not resolved: c1: two of its classes have ARV cosine" in shown


def test_a_clean_split_is_resolved(cli, tmp_path):
    colours = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
    _, shown, verdict, resolved, _ = split_and_verify(cli, tmp_path, "colour_net", colours, "green", "red")
    assert [u["reason"] for u in verdict["channels"]] == ["serves concept 1 only, monosemantic",
                                                          "serves concept 2 only, monosemantic"]
    assert verdict["resolved"] is True and resolved is True and ": resolved (every new channel" in shown
