"""A run remembers the thresholds it was made with (tau, p, gamma): verify, evaluate and the report judge it
by them unless told otherwise, and say which they used; an evaluation of no image says why."""

import json

import pytest

from polysem.constants import GAMMA, TAU, P
from polysem.method.figure_data import screening_thresholds
from polysem.method.runs import disentangle, run_row
from polysem.method.verification import verify
from polysem.query import Store
from polysem.reporting import evaluate


@pytest.fixture
def made_at_low_tau(fixture_store):
    """The opponent-colour store with a second run made at tau 0.01 and p 0.6 (not the paper's)."""
    built = fixture_store("opponent-colour-run")
    run = disentangle(built.store, 0, concept1=["green"], concept2=["red"], tau=0.01, p=0.6, progress=False)
    return built.store, run, built.info["run_id"]


def test_the_run_records_its_thresholds(made_at_low_tau):
    store, run, older = made_at_low_tau
    assert run.thresholds == (0.01, 0.6, GAMMA)
    assert run_row(Store(store), run.run_id).thresholds == (0.01, 0.6, GAMMA)  # read back from the catalog
    assert run_row(Store(store), older).thresholds == (TAU, P, GAMMA)


def test_verify_and_evaluate_use_the_runs_own_unless_given(made_at_low_tau):
    store, run, older = made_at_low_tau
    own = verify(store, run.run_id, progress=False)
    assert (own.tau, own.p, own.gamma) == (0.01, 0.6, GAMMA)
    given = verify(store, run.run_id, tau=0.05, progress=False)
    assert (given.tau, given.p, given.gamma) == (0.05, 0.6, GAMMA)  # the others stay the run's
    assert evaluate(store, run.run_id, progress=False).tau == 0.01
    assert evaluate(store, older, progress=False).tau == TAU
    assert evaluate(store, run.run_id, tau=0.2, progress=False).tau == 0.2


def test_the_cli_says_which_thresholds_it_used(cli, made_at_low_tau):
    store, run, _ = made_at_low_tau
    shown = cli("verify", run.run_id, "--gamma", 0.4, "--store", store)
    assert shown.exit_code == 0, shown.output
    assert "thresholds: tau 0.01 (the run's), p 0.6 (the run's), gamma 0.4 (given)" in shown.output
    evaluated = cli("evaluate", run.run_id, "--store", store)
    assert "thresholds: tau 0.01 (the run's)" in evaluated.output
    (recorded,) = json.loads(cli("runs", run.run_id, "--format", "json", "--store", store).output)
    parameters = recorded["parameters"]
    assert (json.loads(parameters) if isinstance(parameters, str) else parameters)["gamma"] == GAMMA


def test_an_evaluation_of_no_image_says_why(cli, fixture_store):
    """A random tiny CNN spreads every image's positive attribution over several channels: at tau 1 no image is
    selected and the answer says why; at tau 0 every image is, and there is no reason to give."""
    store = fixture_store("tiny").store
    run = disentangle(store, 1, concept1=[0], concept2=[2], force=True, progress=False)
    nothing = evaluate(store, run.run_id, tau=1.0, progress=False)
    assert [c.n_images for c in nothing.per_concept] == [0, 0]
    assert "no val image of the concepts' classes has a relative attribution >= tau 1.0" in nothing.why_empty
    assert f"the run was made at tau {TAU}" in nothing.why_empty
    assert "No images evaluated" in nothing._repr_markdown_()
    everything = evaluate(store, run.run_id, tau=0.0, progress=False)
    assert all(c.n_images > 0 for c in everything.per_concept) and everything.why_empty is None
    shown = cli("evaluate", run.run_id, "--tau", 1, "--store", store)
    assert shown.exit_code == 0 and "nothing evaluated: no val image" in shown.output


def test_the_report_screens_at_the_latest_runs_thresholds_and_says_so(cli, made_at_low_tau, tmp_path):
    store, run, _ = made_at_low_tau
    assert screening_thresholds(Store(store), (None, None, None)) == \
        ((0.01, 0.6, GAMMA), f"run {run.run_id}'s (the latest)")
    assert screening_thresholds(Store(store), (0.02, 0.5, 0.3)) == ((0.02, 0.5, 0.3), "given")
    made = cli("report", "--out", tmp_path / "report", "--store", store)
    assert made.exit_code == 0, made.output
    assert f"screening section at tau 0.01, p 0.6, gamma {GAMMA} (run {run.run_id}'s (the latest) thresholds)" \
        in made.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"(tau 0.01, p 0.6) whose ARVs have cosine below gamma {GAMMA}" in page
