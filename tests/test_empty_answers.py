"""An empty answer says why: the screening's counts along the way and which option to change; a sweep counts
the candidates over a grid in one pass and agrees with the screening at every point of it."""

import json

from polysem.query import Store


def test_an_empty_screen_says_which_count_ran_out(cli, colour_store):
    nothing = cli("screen", "--tau", 0.99, "--store", colour_store)
    assert nothing.exit_code == 0 and "0 rows" in nothing.stdout
    relevant = Store(colour_store).sql("SELECT count(*) AS n, count(DISTINCT channel) AS c FROM "
                                       "relevant_pairs(tau := 0.99)").to_pylist()[0]
    assert relevant["n"] == relevant["c"] > 0  # every relevant channel serves one class only at this tau
    assert (f"{relevant['n']} relevant (channel, class) pairs at tau 0.99, p 0.75, but no channel is relevant for "
            "two classes: lower --p or --tau") in nothing.stderr
    cosines = Store(colour_store).sql("SELECT min(cosine) AS m FROM arv_cosine()").column("m")[0].as_py()
    dissimilar = cli("screen", "--gamma", 0.001, "--store", colour_store, "--format", "json")
    assert json.loads(dissimilar.stdout) == []
    assert f"lowest ARV cosine among their classes is {cosines:.3f} >= gamma 0.001" in dissimilar.stderr
    assert f"raise --gamma above {cosines:.3f}" in dissimilar.stderr
    concepts = cli("screen", "--concepts", "--gamma", 0.001, "--store", colour_store)
    assert concepts.exit_code == 0 and "raise --gamma" in concepts.stderr


def test_the_sweep_agrees_with_the_screening_at_every_point(colour_store):
    from polysem.query.screening import sweep

    store = Store(colour_store)
    grid = sweep(store, taus=(0.01, 0.03, 0.3), ps=(0.5, 0.75), gammas=(0.05, 0.5, 0.99)).to_pylist()
    assert len(grid) == 18
    for row in grid:
        pairs = store.sql("SELECT * FROM polysemantic_pairs(tau := $t, p := $p, gamma := $g)",
                          {"t": row["tau"], "p": row["p"], "g": row["gamma"]}).to_pylist()
        relevant = store.sql("SELECT count(*) AS n FROM relevant_pairs(tau := $t, p := $p)",
                             {"t": row["tau"], "p": row["p"]}).column("n")[0].as_py()
        assert row["candidate_pairs"] == len(pairs) and row["relevant_pairs"] == relevant, row
        assert row["candidate_channels"] == len({r["channel"] for r in pairs}), row


def test_sweep_on_the_command_line(cli, colour_store):
    result = cli("screen", "--sweep", "--store", colour_store)
    assert result.exit_code == 0 and "g<0.50" in result.stdout
    assert all(len(line) <= 100 for line in result.stdout.splitlines())
    rows = json.loads(cli("screen", "--sweep", "--store", colour_store, "--format", "json").stdout)
    assert {"tau", "p", "gamma", "relevant_pairs", "shared_channels", "min_cosine", "candidate_pairs",
            "candidate_channels"} == set(rows[0])


def test_wordnet_with_nothing_to_score_says_so_and_succeeds(cli, colour_store):
    result = cli("wordnet", "--tau", 0.99, "--store", colour_store, "--wordnet-dir", "/nonexistent")
    assert result.exit_code == 0, result.output
    assert "nothing to score: no two classes share a relevant channel at tau 0.99, p 0.75" in result.output


def test_the_disentangle_refusal_names_tau_and_p_next_to_force(cli, colour_store):
    result = cli("disentangle", "--channel", 1, "--concept1", "green", "--concept2", "red", "--store", colour_store)
    assert result.exit_code == 2
    assert "lower --tau or --p" in result.output and "pass --force" in result.output
