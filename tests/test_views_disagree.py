"""The report explains, per new unit, when the attribution verdict (verify) and the activation view (its top
images) disagree, with both numbers; it says nothing where they agree."""

from types import SimpleNamespace

from polysem.figures import page
from polysem.util.readings import views_disagree

SETTINGS = {"tau": 0.03, "p": 0.75}
FAILS = {"serves": False, "monosemantic": True, "reason": "also relevant for class 2 of another concept"}
SERVES = {"serves": True, "monosemantic": True, "reason": "serves concept 1 only, monosemantic"}


def test_a_clean_looking_unit_that_verify_rejects_is_explained_with_both_numbers():
    text = views_disagree("c1", FAILS, 95, 100, SETTINGS, "val")
    assert "not resolved by attribution (also relevant for class 2 of another concept)" in text
    assert "95 of its 100 most activating val images (95%) are of its concept" in text
    assert "tau 0.03" in text and "p 0.75" in text


def test_a_mixed_unit_that_verify_accepts_is_explained_too():
    text = views_disagree("c2", SERVES, 30, 100, SETTINGS, "val")
    assert "serves its concept only by attribution" in text and "only 30 of its 100" in text


def test_agreeing_views_say_nothing():
    assert views_disagree("c1", SERVES, 95, 100, SETTINGS, "val") is None  # both clean
    assert views_disagree("c1", FAILS, 40, 100, SETTINGS, "val") is None  # both mixed
    assert views_disagree("c1", FAILS, 89, 100, SETTINGS, "val") is None  # below the clean share: no claim
    assert views_disagree("c1", FAILS, 0, 0, SETTINGS, "val") is None


def test_the_page_shows_the_explanation_of_each_disagreeing_unit():
    histogram = [{"concept": 1, "n_images": 19}, {"concept": None, "n_images": 1}]
    units = {"c1": SimpleNamespace(own=1, top=[{}] * 20, histogram=histogram),
             "c2": SimpleNamespace(own=2, top=[{}] * 20, histogram=[{"concept": 2, "n_images": 20}])}
    report = SimpleNamespace(figures=SimpleNamespace(whole=SimpleNamespace(units=units, split="val")),
                             verification=SETTINGS,
                             verdicts=[{**FAILS, "unit": "c1"}, {**SERVES, "unit": "c2"}])
    parts = page._disagreements(report)
    assert len(parts) == 1 and "c1: not resolved by attribution" in parts[0] and "19 of its 20" in parts[0]
