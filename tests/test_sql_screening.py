"""The screening SQL: every macro, known answers, and plain re-implementations of the maths."""

import json
import re

import numpy as np
import pytest
import torch
from polysem.query import Store
from polysem.query.sqlfiles import SqlFileError, load_blocks, parse_sql

from polysem import constants


@pytest.fixture
def tiny_store(fixture_store):
    return fixture_store("tiny-train-8").store


def test_every_view_and_macro_runs(colour_store):
    from polysem.method.runs import disentangle

    from polysem.method.verification import verify

    run_id = disentangle(colour_store, 0, concept1=[1], concept2=[2], progress=False).run_id
    verify(colour_store, run_id, progress=False)  # for verification_verdicts
    store = Store(colour_store)
    calls = {  # macros that need arguments
        "arv_of": "SELECT arv_of([1.0, 2, 3, 4], [1.0, 1, 2, 2], 2) AS r",
        "positive_sum": "SELECT positive_sum([1.0, -2, 3]) AS s",
        "sample_rows": "SELECT * FROM sample_rows('samples/*/*/*.parquet')",
        "relative_attribution": "SELECT relative_attribution(1.0, 4.0) AS r",
        "channel_attribution": "SELECT channel_attribution([0.5, 0.25, 0.125], 1) AS a",
        "concept_arv": "SELECT * FROM concept_arv(0, [1, 2])",
        "run_activations": f"SELECT * FROM run_activations('{run_id}')",
        "evaluation_summary": f"SELECT * FROM evaluation_summary('{run_id}')",
        "channel_activation": "SELECT channel_activation([1.0, 2], [3.0, 4], 0.5, 4) AS a",
        "channel_top_images": "SELECT * FROM channel_top_images(0, 3)",
        "run_unit_weights": f"SELECT * FROM run_unit_weights('{run_id}')",
        "unit_top_images": f"SELECT * FROM unit_top_images('{run_id}', 3)",
        "unit_class_histogram": f"SELECT * FROM unit_class_histogram('{run_id}', 3)",
        "clamped_relative_attributions": "SELECT * FROM clamped_relative_attributions([7], [1.0], [4.0])",
        "selected_activations": f"SELECT * FROM selected_activations('{run_id}')",
        "weight_arv_cosine": "SELECT * FROM weight_arv_cosine([1.0, 1, 0], [0, 1, 2])",
        "screen_sweep": "SELECT * FROM screen_sweep([0.03], [0.75], [0.5])",
        "unit_verdicts": "SELECT * FROM unit_verdicts([[1], [2]], [[1], [2]], [NULL, NULL]::DOUBLE[], 0.5)",
    }
    for block in load_blocks():
        if block.kind == "TABLE":
            continue
        if block.name in calls:
            sql = calls[block.name]
        elif block.kind == "VIEW":
            sql = f"SELECT * FROM {block.name}"
        else:
            sql = f"SELECT * FROM {block.name}()"
        result = store.sql(sql)
        assert result.num_rows > 0 or block.name == "ingest_errors", block.name  # no unreadable colour image
    assert store.sql(calls["arv_of"]).to_pylist() == [{"r": [3.0, 14.0]}]
    assert store.sql(calls["positive_sum"]).to_pylist() == [{"s": 4.0}]
    assert store.sql(calls["channel_attribution"]).to_pylist() == [{"a": 0.25}]  # channel 1 is the second
    assert store.sql(calls["channel_activation"]).to_pylist() == [{"a": 13.0}]  # 3 + 8 + 0.5 x 4 positions
    means = store.sql("SELECT mean_attribution AS m FROM class_channel_means WHERE class_id = 1 AND channel = 2")
    direct = store.sql("SELECT avg(channel_attribution(attribution, 2)) AS m FROM samples "
                         "WHERE split = 'train' AND target = 1")
    assert means.column("m")[0].as_py() == pytest.approx(direct.column("m")[0].as_py())
    # channel 0's own weight row gives arv_cosine's cosines
    expected = store.sql("SELECT class1, class2, cosine FROM arv_cosine(p := 0.0) WHERE channel = 0 "
                           "ORDER BY class1, class2").to_pylist()
    got = store.sql(calls["weight_arv_cosine"]).to_pylist()
    assert [(r["class1"], r["class2"]) for r in got] == [(0, 1), (0, 2), (1, 2)]
    assert {(r["class1"], r["class2"]): pytest.approx(r["cosine"]) for r in expected} == \
        {(r["class1"], r["class2"]): r["cosine"] for r in got if (r["class1"], r["class2"]) in
         {(e["class1"], e["class2"]) for e in expected}}
    assert store.sql("SELECT positive_sum([-1.0, 0]) AS s, relative_attribution(0.0, 0.0) AS r, "
                       "relative_attribution(-1.0, 4.0) AS n").to_pylist() == [{"s": 0, "r": None, "n": -0.25}]


def test_sql_defaults_are_the_method_constants():
    checked = set()
    for block in load_blocks():
        for name, value in re.findall(r"\b(tau|p|gamma) := ([0-9.]+)", block.sql.split(" AS ")[0]):
            assert float(value) == getattr(constants, name.upper()), f"{block.name}: {name} := {value}"
            checked.add((block.name, name))
    assert {("polysemantic_pairs", "gamma"), ("relevant_pairs", "p"), ("class_channel_relevance", "tau"),
            ("evaluation_summary", "tau")} <= checked


def test_known_answer_model_reports_exactly_the_planted_channel(cli, colour_store):
    result = cli("screen", "--store", colour_store, "--format", "json")
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.output)
    assert [(p["channel"], p["name1"], p["name2"]) for p in pairs] == [(0, "green", "red")]
    assert pairs[0]["cosine"] < 0.1
    # the monosemantic channels are relevant for one class each, so never a pair
    relevant = Store(colour_store).sql("SELECT channel, class_id FROM relevant_pairs() ORDER BY ALL").to_pylist()
    assert relevant == [{"channel": 0, "class_id": 1}, {"channel": 0, "class_id": 2},
                        {"channel": 1, "class_id": 0}, {"channel": 2, "class_id": 2}]


def numpy_relevance(store, tau, correct_only=False):
    rows = store.sql("SELECT target, prediction, attribution FROM samples WHERE split = 'train'").to_pylist()
    if correct_only:
        rows = [r for r in rows if r["prediction"] == r["target"]]
    expected = {}
    for target in sorted({r["target"] for r in rows}):
        attributions = np.array([r["attribution"] for r in rows if r["target"] == target], dtype=np.float32)
        threshold = np.float32(tau) * np.clip(attributions, 0, None).sum(1, keepdims=True)
        relevant = attributions >= threshold
        for channel in range(attributions.shape[1]):
            if relevant[:, channel].any():
                expected[(target, channel)] = (len(attributions), int(relevant[:, channel].sum()))
    return expected


@pytest.mark.parametrize("tau", [0.03, 0.2])
@pytest.mark.parametrize("correct_only", [False, True])
def test_relevance_equals_numpy_reimplementation(tiny_store, tau, correct_only):
    store = Store(tiny_store)
    got = store.sql("SELECT * FROM class_channel_relevance(tau := ?, correct_only := ?)", [tau, correct_only]).to_pylist()
    assert {(r["class_id"], r["channel"]): (r["n_images"], r["n_relevant"]) for r in got} == numpy_relevance(store, tau, correct_only)
    assert all(r["fraction"] == pytest.approx(r["n_relevant"] / r["n_images"]) for r in got)
    if not correct_only:
        p_rows = store.sql("SELECT * FROM relevant_pairs(tau := ?, p := 0.5)", [tau]).to_pylist()
        assert {(r["class_id"], r["channel"]) for r in p_rows} == {(r["class_id"], r["channel"]) for r in got if r["fraction"] >= 0.5}


def brute_force_arv(net, image_tensors, channel):
    """Definition 3.1 directly: gradient x input of f_{l-1} for sum_{h,w} f_l[c], averaged over images."""
    vectors = []
    for image in image_tensors:
        f_prev = net.stem(image.unsqueeze(0)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(net.probe(f_prev)[0, channel].sum(), f_prev)
        vectors.append((f_prev * grad).sum(dim=(2, 3))[0].detach().numpy())
    return np.mean(vectors, axis=0)


def class_images(store, target, transform):
    from PIL import Image

    paths = store.sql("SELECT path FROM samples WHERE split = 'train' AND target = ?", [target]).column("path").to_pylist()
    return [transform(Image.open(p).convert("RGB")) for p in paths]


@pytest.mark.parametrize("which", ["tiny", "colour"])
def test_arv_view_equals_brute_force_autograd(which, tiny_store, colour_store):
    from tests.models import colour_net, small, tiny_net, to_tensor

    store, net, transform = (Store(tiny_store), tiny_net(), small) if which == "tiny" else (Store(colour_store), colour_net(), to_tensor)
    for channel, target in [(0, 0), (2, 1), (4 if which == "tiny" else 1, 2)]:
        got = store.sql("SELECT arv FROM arv WHERE channel = ? AND class_id = ?", [channel, target]).to_pylist()
        assert len(got) == 1
        expected = brute_force_arv(net.eval(), class_images(store, target, transform), channel)
        np.testing.assert_allclose(got[0]["arv"], expected, rtol=1e-4, atol=1e-5)


def test_arv_cosine_matches_numpy(colour_store):
    store = Store(colour_store)
    row = store.sql("SELECT * FROM arv_cosine()").to_pylist()[0]
    a = np.array(store.sql("SELECT arv FROM arv WHERE channel = 0 AND class_id = 1").to_pylist()[0]["arv"])
    b = np.array(store.sql("SELECT arv FROM arv WHERE channel = 0 AND class_id = 2").to_pylist()[0]["arv"])
    assert row["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_arv_is_lazy(colour_store):
    """A filtered arv row reads one weight row and one class's images: the filters reach the Parquet scans."""
    with Store(colour_store).connect() as conn:
        plan = "\n".join(row[1] for row in conn.execute("EXPLAIN SELECT * FROM arv WHERE channel = 1 AND class_id = 2").fetchall())
    assert re.search(r"Filters:.*channel\s*=\s*1", plan.replace("\n", " ").replace("│", " "))
    assert re.search(r"target\s*=\s*2", plan)


def test_class_means_are_means(tiny_store):
    store = Store(tiny_store)
    rows = store.sql("SELECT target, input_sum FROM samples").to_pylist()
    for mean in store.sql("SELECT * FROM class_means").to_pylist():
        sums = np.array([r["input_sum"] for r in rows if r["target"] == mean["class_id"]])
        assert mean["n_images"] == len(sums)
        np.testing.assert_allclose(mean["mean_input_sum"], sums.mean(0), rtol=1e-6)


def test_sql_loader_rejects_malformed_blocks():
    with pytest.raises(SqlFileError, match="x.sql:1: block 'a' is empty"):
        parse_sql("-- name: a\n-- doc\n", "x.sql")
    with pytest.raises(SqlFileError, match="x.sql:1: block 'a' creates 'b'"):
        parse_sql("-- name: a\n-- doc\nCREATE VIEW b AS SELECT 1;", "x.sql")
    with pytest.raises(SqlFileError, match="has no doc comment"):
        parse_sql("-- name: a\nCREATE VIEW a AS SELECT 1;", "x.sql")
    with pytest.raises(SqlFileError, match="x.sql:1: SQL outside"):
        parse_sql("SELECT 1;\n-- name: a\n-- doc\nCREATE VIEW a AS SELECT 1;", "x.sql")
