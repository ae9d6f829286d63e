"""The method's edge cases (docs/method.md: where the paper is silent) on hand-built known-answer models."""

import json

import pytest
from polysem.query import Store

from polysem.method.disentangling import SourceSplit, bias_only_concepts, split_sources
from polysem.method.runs import disentangle
from tests.helpers import assert_refused_last_line as assert_refused


def test_a_class_whose_logit_ignores_the_features_is_relevant_for_no_channel(fixture_store):
    store = Store(fixture_store("blind-colour-train").store)
    red = store.sql("SELECT attribution FROM samples WHERE target = 2").column("attribution").to_pylist()
    assert red and all(a == [0.0, 0.0, 0.0] for a in red)  # the known answer: no attribution at all
    # the reference code's 0 >= tau * 0 would make every channel relevant; polysem makes none relevant
    assert store.sql("SELECT count(*) AS n FROM class_channel_relevance() WHERE class_id = 2").column("n")[0].as_py() == 0
    pairs = store.sql("SELECT channel, class_id FROM relevant_pairs() ORDER BY ALL").to_pylist()
    assert pairs and all(p["class_id"] != 2 for p in pairs)
    assert all(2 not in (p["class1"], p["class2"]) for p in store.sql("SELECT * FROM arv_cosine()").to_pylist())


def test_exact_zeros_in_eq6_are_a_perfect_split_not_an_error(fixture_store):
    """clean_colour_net's detectors are exactly 0 on the other colours: every ratio of Eq. 6 with |.| has a zero
    denominator. The search ranks by separated images, so channel 0 splits into G (green) and R (red)."""
    store = fixture_store("clean-colour-train").store
    run = disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    assert run.sources == [[1], [0]] and run.shared == [2] and run.warnings == []
    scores = Store(store).sql("SELECT rho, objective_value, separated, skipped FROM rho_scores ORDER BY rho").to_pylist()
    assert all(s["separated"] == 2.0 and s["objective_value"] == 0.0 and s["skipped"] is None for s in scores)
    assert run.rho == 0.05  # every rho ties: the smallest wins


def test_split_and_bias_only_rules():
    import torch

    # three concepts: i -> j when rho R_j[i] beats every other concept; the lowest j wins ties
    arvs = [[4.0, 0, 1, 1], [0, 4, 1, 0], [1, 0, 4, 1]]
    assert split_sources(arvs, 0.5) == SourceSplit(((0,), (1,), (2,)), (3,))
    assert split_sources(arvs, 1.0) == SourceSplit(((0,), (1,), (2,)), (3,))
    weight = torch.tensor([1.0, 0.0, 2.0, 3.0]).view(4, 1, 1)
    assert bias_only_concepts(weight, SourceSplit(((0,), (1,), ()), (2, 3))) == [2, 3]  # zero weight; no source


def test_a_channel_that_carries_only_its_bias_is_flagged(cli, fixture_store):
    store = fixture_store("bias-colour").store
    args = ["disentangle", "--channel", 0, "--concept1", "blue", "--concept2", "red", "--store", store]
    # blue images reach channel 0 only through its bias: blue has no l-1 channel of its own at any rho
    assert_refused(cli(*args), "at every rho of the grid some concept has no l-1 channel")
    assert_refused(cli(*args, "--rho", "0.5"), "concept 1 of channel 0 has no l-1 channel of its own", "--force")
    result = cli(*args, "--rho", "0.5", "--force", "--format", "json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["sources"] == [[], [0]] and any("concept 1" in w for w in run["warnings"])
    numbers = json.loads(cli("evaluate", run["run_id"], "--store", store, "--format", "json").stdout)
    assert numbers["concept1"]["n_images"] == 4 and numbers["concept1"]["bias_only"] is True
    assert numbers["concept2"]["n_images"] == 4 and numbers["concept2"]["bias_only"] is False
    assert numbers["concept1"]["frac1"] == pytest.approx(1.0) and numbers["concept1"]["frac_residual"] == pytest.approx(1.0)


def test_from_screen_passes_over_a_candidate_that_no_rho_splits(colour_store):
    """Candidates come best first; ColourNet's channel 1 reads only B, so blue/red never splits: the next
    candidate, channel 0 (green/red), is the one disentangled, and the skip is said."""
    import warnings

    from polysem.method.runs import ChannelRequest, disentangle_candidates, disentangle_channels

    candidates = [ChannelRequest(1, [["blue"], ["red"]]), ChannelRequest(0, [["green"], ["red"]]),
                  ChannelRequest(2, [["red"], ["green"]])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = disentangle_candidates(colour_store, candidates, take=1, force=True, progress=False)
    assert [(r.channel, r.sources) for r in runs] == [(0, [[1], [0]])]
    assert any("channel 1 passed over" in str(w.message) for w in caught)
    with pytest.raises(Exception, match="at every rho of the grid"):  # named, not a candidate: refused
        disentangle_channels(colour_store, candidates[:1], force=True, progress=False)
