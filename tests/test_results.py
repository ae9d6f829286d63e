"""The library's answers are frozen dataclasses (`polysem.util.results.Result`): fields mypy checks, `to_dict()`
the plain data the CLI prints as JSON (the keys of earlier releases), `result["key"]` the old dict read. The
checks the command line once made itself live in the library: a notebook gets the same refusals."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import polysem
from polysem.errors import PolysemError
from tests.helpers import ROOT, assert_refused, snapshot


@pytest.fixture(scope="module")
def built(store_cache, tmp_path_factory):
    """One copy of a store with a run (green / red of OpponentColourNet's channel 0) for the whole module."""
    return store_cache.copy("opponent-colour-run", tmp_path_factory.mktemp("results") / "store")


def test_a_run_is_a_frozen_dataclass_whose_dict_is_the_json(built, cli):
    from polysem.method.runs import Run, run_row

    run = run_row(polysem.Store(built.store), built.info["run_id"])
    assert isinstance(run, Run) and run.run_id == built.info["run_id"] and run.concepts == [[1], [2]]
    assert (run.concept1, run.concept2, run.sources1, run.sources2) == ([1], [2], [1], [0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.rho = 0.5  # type: ignore[misc]
    record = run.to_dict()
    assert list(record) == [f.name for f in dataclasses.fields(Run)] + ["concept1", "concept2", "sources1", "sources2"]
    assert run["run_id"] == run.run_id and run["sources1"] == [1]  # the dict read of earlier releases
    three = dataclasses.replace(run, concepts=[[0], [1], [2]], sources=[[2], [1], [0]])
    assert three.concept1 is None and "concept1" not in three.to_dict()


def test_verify_and_evaluate_answer_with_types_and_the_cli_prints_their_dicts(built, cli):
    from polysem.method.evaluation import ConceptEvaluation, Evaluation
    from polysem.method.verification import UnitVerdict, Verification

    run_id = built.info["run_id"]
    checked = polysem.verify(built.store, run_id, progress=False)
    assert isinstance(checked, Verification) and all(isinstance(c, UnitVerdict) for c in checked.channels)
    assert [c.unit for c in checked.channels] == ["c1", "c2"] and checked.resolved == all(c.ok for c in checked.channels)
    shown = json.loads(cli("verify", run_id, "--store", built.store, "--format", "json").stdout)
    assert shown == json.loads(json.dumps(checked.to_dict()))
    assert list(shown) == ["run_id", "resolved", "channels", "classes", "n_images", "tau", "p", "gamma"]
    assert list(shown["channels"][0]) == ["unit", "relevant_classes", "min_cosine", "own_classes",
                                          "other_concept_classes", "unrelated_classes", "serves", "monosemantic",
                                          "reason"]

    result = polysem.evaluate(built.store, run_id, progress=False)
    assert isinstance(result, Evaluation) and result.plots is None and result.concepts == [[1], [2]]
    assert all(isinstance(c, ConceptEvaluation) and len(c.fractions) == 2 for c in result.per_concept)
    numbers = json.loads(cli("evaluate", run_id, "--store", built.store, "--format", "json").stdout)
    assert list(numbers) == ["selection", "concept1", "concept2", "top_classes"]
    assert list(numbers["concept1"]) == ["n_images", "fractions", "frac1", "frac2", "frac_residual", "bias_only"]
    assert numbers == json.loads(json.dumps(result.to_dict()))
    assert result["concept2"]["frac2"] == result.per_concept[1].fractions[1]


def test_the_library_refuses_what_the_command_line_refuses(built, cli, tmp_path):
    """Each check once made by the CLI alone: the library's message names the parameter, the CLI's the flag."""
    from polysem.method.concepts import screening
    from polysem.method.runs import disentangle_runs
    from polysem.method.visualize import visualize
    from polysem.reporting import plot_wordnet

    store, run_id = built.store, built.info["run_id"]
    before = snapshot(store)
    cases = [
        (lambda: disentangle_runs(store, channel=0, concept1=[1], concept2=[2], gamma=0.3),
         "`take` and `gamma` choose channels for `from_screen`",
         ["disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--gamma", 0.3],
         "--limit and --gamma choose channels for --from-screen"),
        (lambda: disentangle_runs(store, channel=0, concept1=[1], concepts=[[1], [2]]),
         "give `concepts` once per concept, or `concept1` and `concept2`, not both",
         ["disentangle", "--channel", 0, "--concept1", 1, "--concept", 1, "--concept", 2],
         "give --concept once per concept, or --concept1 and --concept2, not both"),
        (lambda: disentangle_runs(store, from_screen=True, channel=0), "`from_screen` picks channels",
         ["disentangle", "--from-screen", "--channel", 0], "--from-screen picks channels and concepts itself"),
        (lambda: disentangle_runs(store, channel=0, concept1=[1], concept2=[2], again=True), "`again` is for",
         ["disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--again"], "--again is for --from-screen"),
        (lambda: screening(store, sweep=True, limit=3), "`sweep` counts candidates over its own grid",
         ["screen", "--sweep", "--limit", 3], "drop --concepts, --limit, --tau, --p and --gamma"),
        (lambda: visualize(store, run_id, seed=1, seeds=[0, 1]), "give `seed` or `seeds`, not both",
         ["visualize", run_id, "--seed", 1, "--seeds", "0,1"], "give --seed or --seeds, not both"),
        (lambda: polysem.evaluate(store, run_id, figure_format="svg"), "`figure_format` is the format of the",
         ["evaluate", run_id, "--figure-format", "svg"], "add --plots FOLDER or drop it"),
        (lambda: plot_wordnet(store, tmp_path / "w.txt"), "name a .png, .svg or .pdf file",
         ["plot", "wordnet", "--out", tmp_path / "w.txt"], "--out"),
        (lambda: plot_wordnet(store, tmp_path / "w.png", figure_format="svg"), "make them agree",
         ["plot", "wordnet", "--out", tmp_path / "w.png", "--figure-format", "svg"], "--figure-format is svg"),
    ]
    for call, message, args, flags in cases:
        with pytest.raises(PolysemError, match=message.replace("(", r"\(").replace(".", r"\.")):
            call()
        assert_refused(cli(*args, "--store", store), flags)
    assert snapshot(store) == before
    assert list(tmp_path.iterdir()) == []


def test_text_is_parsed_by_the_library():
    from polysem.util.parsing import rho_value, split_values, whole_numbers

    assert whole_numbers("seeds", " 0, 1,,2 ") == [0, 1, 2] and whole_numbers("seeds", None) is None
    assert whole_numbers("classes", "-1") == [-1]  # its range is the caller's to check
    for bad in ("0,x", "1.5", "0;1"):
        with pytest.raises(ValueError, match=f"bad `seeds` '{bad}': give whole numbers separated by commas"):
            whole_numbers("seeds", bad)
    assert rho_value("auto") == "auto" and rho_value("0.25") == 0.25
    with pytest.raises(ValueError, match="bad `rho` 'half'"):
        rho_value("half")
    assert split_values(["530", " 531,532 ", ""]) == ["530", "531", "532"] and split_values(None) == []


def _parameters(node: ast.FunctionDef) -> tuple[int, int]:
    arguments = node.args
    positional = [a for a in arguments.posonlyargs + arguments.args if a.arg not in ("self", "cls")]
    return len(positional), len(arguments.kwonlyargs)


def test_no_function_takes_more_than_eight_parameters_unless_keyword_only():
    """More than 8 parameters: only a public entry point whose options are keyword-only (after at most three
    positional ones, e.g. store, DATA_DIR, split). Anything else takes a small dataclass of options."""
    offenders = []
    for folder in ("polysem", "ingest", "query"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    positional, keyword_only = _parameters(node)
                    if positional + keyword_only > 8 and (node.name.startswith("_") or positional > 3):
                        offenders.append(f"{Path(path).relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == []
