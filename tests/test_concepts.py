"""Concepts of a channel, k-way disentanglement from the screen, and `polysem verify`, on known answers."""

import itertools
import json

import numpy as np
import pytest
import torch
from polysem.query import Store

from polysem.method.concepts import channel_concepts, complete_linkage
from polysem.method.runs import base_model, load_model
from polysem.method.verification import verify
from tests.helpers import COLOURS


# -- complete linkage against independent answers -------------------------------------------------

def lance_williams(similarity: np.ndarray, gamma: float) -> list[list[int]]:
    """Complete linkage the textbook way: a similarity matrix updated by s(k, i u j) = min(s(k, i), s(k, j))."""
    s = similarity.astype(float).copy()
    np.fill_diagonal(s, -np.inf)
    groups = {i: [i] for i in range(len(s))}
    while len(groups) > 1:
        alive = sorted(groups)
        sub = s[np.ix_(alive, alive)]
        a, b = np.unravel_index(np.argmax(sub), sub.shape)
        if sub[a, b] < gamma:
            break
        i, j = sorted((alive[a], alive[b]))
        s[i, :] = s[:, i] = np.minimum(s[i, :], s[j, :])
        s[i, i] = -np.inf
        s[j, :] = s[:, j] = -np.inf
        groups[i] += groups.pop(j)
    return sorted(sorted(g) for g in groups.values())


def partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest):
        for n in range(len(smaller)):
            yield smaller[:n] + [[first] + smaller[n]] + smaller[n + 1:]
        yield [[first]] + smaller


@pytest.mark.parametrize("seed", range(40))
def test_complete_linkage_matches_lance_williams_and_is_valid_and_maximal(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    matrix = rng.uniform(-0.2, 1.0, size=(n, n))
    matrix = (matrix + matrix.T) / 2
    ids = sorted(rng.choice(1000, size=n, replace=False).tolist())
    cosine = {(ids[a], ids[b]): matrix[a, b] for a in range(n) for b in range(a + 1, n)}
    gamma = 0.5
    concepts = complete_linkage(ids, cosine, gamma)
    assert concepts == [[ids[i] for i in g] for g in lance_williams(matrix, gamma)]
    assert sorted(c for g in concepts for c in g) == ids
    # valid: no polysemantic pair inside a concept; maximal: no two concepts could merge
    assert all(cosine[(a, b)] >= gamma for g in concepts for a, b in itertools.combinations(g, 2))
    assert all(min(cosine[(min(a, b), max(a, b))] for a in g for b in h) < gamma
               for g, h in itertools.combinations(concepts, 2))
    # among all partitions, the valid and maximal ones include ours (a brute-force sanity bound)
    if n <= 6:
        valid = [sorted(sorted(g) for g in part) for part in partitions(ids)
                 if all(cosine[(min(a, b), max(a, b))] >= gamma for g in part for a, b in itertools.combinations(g, 2))]
        assert concepts in valid and len(concepts) >= min(len(v) for v in valid)


def test_complete_linkage_ties_go_to_the_lowest_class_ids():
    # 1-2, 2-3 and 1-3 all tie at 0.9 but 1 can only join one of them before the group must satisfy all pairs
    cosine = {(1, 2): 0.9, (1, 3): 0.2, (2, 3): 0.9}
    assert complete_linkage([3, 2, 1], cosine, 0.5) == [[1, 2], [3]]
    cosine = {(1, 2): 0.2, (1, 3): 0.9, (2, 3): 0.9}
    assert complete_linkage([1, 2, 3], cosine, 0.5) == [[1, 3], [2]]
    # a missing or NaN cosine never merges
    assert complete_linkage([1, 2], {(1, 2): float("nan")}, 0.5) == [[1], [2]]


# -- known-answer models ------------------------------------------------------------------------

@pytest.fixture
def tri_store(fixture_store):
    """Channel 0 serves blue, green and red, each through its own detector (tests.models.tri_colour_net)."""
    return fixture_store("tri-colour").store


@pytest.fixture
def pair_store(fixture_store):
    """Channel 0 serves blue and the two similar darkred and red (tests.models.pair_colour_net)."""
    return fixture_store("pair-colour").store


def assert_logits_unchanged(store, run_id):
    images = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(base_model(Store(store))[0](images), load_model(store, run_id)(images), atol=1e-5)


def test_three_unrelated_concepts_are_found_split_and_verified(cli, tri_store):
    assert list(COLOURS) == ["blue", "green", "red"]  # class ids 0, 1, 2
    found = cli("screen", "--concepts", "--store", tri_store, "--format", "json")
    assert found.exit_code == 0, found.output
    rows = json.loads(found.stdout)
    assert rows == [{"channel": 0, "concepts": [[0], [1], [2]], "names": [["blue"], ["green"], ["red"]],
                     "min_cosine": pytest.approx(rows[0]["min_cosine"])}]
    assert rows[0]["min_cosine"] < 0.1
    recorded = Store(tri_store).sql("SELECT channel, concepts, sizes, gamma FROM channel_concepts").to_pylist()
    assert recorded == [{"channel": 0, "concepts": [[0], [1], [2]], "sizes": [1, 1, 1], "gamma": 0.5}]
    table = cli("screen", "--concepts", "--store", tri_store)
    assert table.exit_code == 0 and "0 blue / 1 green / 2 red" in table.stdout, table.output  # ids, names, concepts

    result = cli("disentangle", "--from-screen", "--limit", 1, "--store", tri_store, "--format", "json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["concepts"] == [[0], [1], [2]]
    assert run["sources"] == [[2], [1], [0]] and run["shared"] == []  # each colour's detector, nothing shared
    assert "sources1" not in run and run["max_logit_diff"] < 1e-5
    assert_logits_unchanged(tri_store, run["run_id"])

    checked = cli("verify", run["run_id"], "--store", tri_store, "--format", "json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["run_id"] == run["run_id"] and report["resolved"] is True
    assert [(c["unit"], c["relevant_classes"], c["min_cosine"]) for c in report["channels"]] == [
        ("c1", [0], None), ("c2", [1], None), ("c3", [2], None)]
    assert Store(tri_store).sql("SELECT resolved FROM run_summary").to_pylist() == [{"resolved": True}]

    # the k x (k + 1) evaluation table and the plots with one row per new channel
    evaluation = cli("evaluate", run["run_id"], "--store", tri_store, "--format", "json", "--plots",
                     tri_store.parent / "plots")
    assert evaluation.exit_code == 0, evaluation.output
    numbers = json.loads(evaluation.stdout)
    for j in range(3):
        fractions = numbers[f"concept{j + 1}"]["fractions"]
        assert len(fractions) == 3 and fractions[j] > 0.9 and sum(fractions) - fractions[j] < 0.1
    assert len(numbers["plots"]) == 7  # density, the panel, the top images of original, c1, c2, c3, the whole picture
    assert sum("panel" in p for p in numbers["plots"]) == 1 and sum("top-c3" in p for p in numbers["plots"]) == 1
    assert set(numbers["top_classes"]["units"]) == {"original", "c1", "c2", "c3"}  # one histogram per unit


def test_two_similar_classes_form_one_concept(cli, pair_store):
    concepts = channel_concepts(pair_store).to_pylist()
    assert [(r["channel"], r["concepts"], r["names"], r["sizes"]) for r in concepts] == [
        (0, [[0], [1, 2]], [["blue"], ["darkred", "red"]], [1, 2])]
    result = cli("disentangle", "--from-screen", "--store", pair_store, "--format", "json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["concepts"] == [[0], [1, 2]] and (run["sources1"], run["sources2"], run["shared"]) == ([2], [0], [1])
    assert_logits_unchanged(pair_store, run["run_id"])
    report = verify(pair_store, run["run_id"], progress=False)
    assert report.resolved is True
    assert [c.relevant_classes for c in report.channels] == [[0], [1, 2]]
    assert report.channels[1].min_cosine > 0.99  # darkred and red read the same R detector


def test_a_split_that_shares_everything_is_unresolved(cli, tri_store):
    result = cli("disentangle", "--channel", 0, "--concept", "blue", "--concept", "green", "--concept", "red",
                 "--rho", "0.001", "--force", "--store", tri_store, "--format", "json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["sources"] == [[], [], []] and run["shared"] == [0, 1, 2]
    assert_logits_unchanged(tri_store, run["run_id"])
    checked = cli("verify", run["run_id"], "--store", tri_store)
    assert checked.exit_code == 0, checked.output
    assert "not resolved" in checked.stdout
    report = json.loads(cli("verify", run["run_id"], "--store", tri_store, "--format", "json").stdout)
    assert report["resolved"] is False
    assert all(c["relevant_classes"] == [0, 1, 2] and c["min_cosine"] < 0.5 for c in report["channels"])
    listed = json.loads(cli("runs", "--store", tri_store, "--format", "json").stdout)
    assert [r["resolved"] for r in listed] == [False]


def test_verify_uses_its_cache_and_refuses_bad_input(cli, tri_store, monkeypatch):
    import polysem.method.verification as verification

    run = json.loads(cli("disentangle", "--from-screen", "--store", tri_store, "--format", "json").stdout)
    first = verify(tri_store, run["run_id"], progress=False)
    monkeypatch.setattr(verification, "layer_attributions", lambda *a, **k: pytest.fail("cache not used"))
    assert verify(tri_store, run["run_id"], progress=False) == first
    for args, message in ((["nope"], "unknown run id"), ([run["run_id"], "--gamma", 2], "--gamma"),
                          ([run["run_id"], "--limit", 0], "--limit")):
        refused = cli("verify", *args, "--store", tri_store)
        assert refused.exit_code == 2 and message in refused.output, refused.output


def test_a_repeated_from_screen_returns_the_identical_run_unless_asked_again(cli, tri_store):
    first = cli("disentangle", "--from-screen", "--store", tri_store, "--format", "json")
    assert first.exit_code == 0, first.output
    run_id = json.loads(first.stdout)["run_id"]
    repeated = cli("disentangle", "--from-screen", "--store", tri_store, "--format", "json")
    assert repeated.exit_code == 0 and json.loads(repeated.stdout)["run_id"] == run_id
    assert f"an identical run exists: {run_id}" in repeated.stderr and "pass --again" in repeated.stderr
    assert Store(tri_store).sql("SELECT count(*) AS n FROM runs").column("n")[0].as_py() == 1
    again = cli("disentangle", "--from-screen", "--again", "--store", tri_store, "--format", "json")
    assert again.exit_code == 0 and json.loads(again.stdout)["run_id"] != run_id
    other = cli("disentangle", "--from-screen", "--objective", "positive", "--store", tri_store, "--format", "json")
    assert other.exit_code == 0 and "identical" not in other.stderr  # other settings: a new run
    assert Store(tri_store).sql("SELECT count(*) AS n FROM runs").column("n")[0].as_py() == 3
    named = cli("disentangle", "--channel", 0, "--concept1", 0, "--concept2", 1, "--again", "--store", tri_store)
    assert named.exit_code == 2 and "--again is for --from-screen" in named.output
