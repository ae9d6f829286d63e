"""`polysem sql`, `export`, `screen`, `wordnet`, `plot wordnet`: outputs, read-only guard, errors."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from polysem.query import Store

from tests.helpers import ROOT, TINY, assert_refused, forget_prepared, make_image_folder, map_logits


def test_sql_formats(cli, colour_store):
    query = "SELECT class_id, name FROM classes ORDER BY class_id"
    table = cli("sql", query, "--store", colour_store)
    assert table.exit_code == 0 and "green" in table.output and "3 rows" in table.output
    as_json = cli("sql", query, "--store", colour_store, "--format", "json")
    assert json.loads(as_json.output) == [{"class_id": 0, "name": "blue"}, {"class_id": 1, "name": "green"},
                                          {"class_id": 2, "name": "red"}]
    as_csv = cli("sql", query, "--store", colour_store, "--format", "csv")
    assert as_csv.output == "class_id,name\n0,blue\n1,green\n2,red\n"


def test_sql_to_parquet_file(cli, colour_store, tmp_path):
    out = tmp_path / "pairs.parquet"
    result = cli("sql", "SELECT * FROM relevant_pairs(p := 0.9)", "--format", "parquet", "--out", out, "--store", colour_store)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 4
    assert_refused(cli("sql", "SELECT 1", "--format", "parquet", "--store", colour_store), "--out")


@pytest.mark.parametrize("statement", ["DELETE FROM runs", "ATTACH 'x.db'", "DROP VIEW samples", "CREATE TABLE t AS SELECT 1",
                                       "COPY classes TO 'x.csv'", "INSERT INTO runs SELECT * FROM runs",
                                       "SELECT 1; SELECT 2"])
def test_sql_is_read_only(cli, colour_store, statement):
    before = Store(colour_store).sql("SELECT count(*) AS n FROM samples").to_pylist()
    result = cli("sql", statement, "--store", colour_store)
    assert result.exit_code == 2 and "Error:" in result.output
    assert Store(colour_store).sql("SELECT count(*) AS n FROM samples").to_pylist() == before


def test_sql_error_is_one_line(cli, colour_store):
    assert_refused(cli("sql", "SELECT nope FROM classes", "--store", colour_store), "nope")


def test_no_store(cli, tmp_path):
    assert_refused(cli("sql", "SELECT 1", "--store", tmp_path / "none"), "no polysem store", "polysem ingest")
    assert_refused(cli("screen", "--store", tmp_path / "none"), "no polysem store")


@pytest.mark.parametrize("suffix", ["parquet", "csv", "json"])
def test_export_table_view_macro_and_query(cli, colour_store, tmp_path, suffix):
    for name in ["classes", "polysemantic_pairs(gamma := 0.9)", "SELECT channel FROM layer_weights WHERE channel > 0"]:
        out = tmp_path / f"out.{suffix}"
        result = cli("export", name, "--out", out, "--store", colour_store)
        assert result.exit_code == 0, result.output
        expected = Store(colour_store).table(name).to_pylist()
        if suffix == "parquet":
            assert pq.read_table(out).to_pylist() == expected
        elif suffix == "json":
            assert json.loads(out.read_text()) == json.loads(json.dumps(expected, default=str))
        else:
            assert len(out.read_text().splitlines()) == len(expected) + 1
    assert_refused(cli("export", "classes", "--out", tmp_path / "x.xlsx", "--store", colour_store), ".parquet, .csv or .json")


def test_screen_bad_parameters_and_missing_train(cli, colour_store, tmp_path):
    assert_refused(cli("screen", "--p", "1.5", "--store", colour_store), "p must be in (0, 1]")
    assert_refused(cli("screen", "--format", "xml", "--store", colour_store), "unknown --format")
    root = map_logits(make_image_folder(tmp_path / "d", "val", {"a": 2}), "val")
    assert cli("ingest", root, "--split", "val", "--store", tmp_path / "s", *TINY).exit_code == 0
    assert_refused(cli("screen", "--store", tmp_path / "s"), "no train images", "--split train")


def test_screen_limit_and_table(cli, colour_store):
    result = cli("screen", "--store", colour_store, "--limit", "1")
    assert result.exit_code == 0 and "green" in result.output and "red" in result.output and "1 row" in result.output


def test_wordnet_similarity_and_plot(cli, colour_store, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYSEM_CACHE", str(tmp_path / "cache"))
    result = cli("wordnet", "--store", colour_store, "--wordnet-dir", "/usr/share/wordnet")
    assert result.exit_code == 0, result.output
    assert "1 class pairs scored" in result.output
    assert (tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet" / "lexnames").is_file()

    # WordNet 3.0: soccer_ball.n.01 and tabby.n.01 are 12 hypernym edges apart (their lowest common hypernym is
    # whole.n.02), so their path similarity is 1 / (12 + 1)
    expected = 1 / 13
    rows = Store(colour_store).sql("SELECT * FROM class_similarity").to_pylist()
    assert rows == [{"class1": 1, "class2": 2, "path_similarity": pytest.approx(expected)}]
    pairs = json.loads(cli("screen", "--store", colour_store, "--format", "json").output)
    assert pairs[0]["wordnet_similarity"] == pytest.approx(expected)

    out = tmp_path / "fig.png"
    plotted = cli("plot", "wordnet", "--out", out, "--store", colour_store)
    assert plotted.exit_code == 0, plotted.output
    assert "1 points" in plotted.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_wordnet_errors(cli, colour_store, tiny_store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYSEM_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(cli("wordnet", "--store", colour_store, "--wordnet-dir", empty), "WordNet not found",
                   "nltk.download('wordnet')", "wordnet-base")
    assert_refused(cli("wordnet", "--store", tiny_store_path), "no WordNet ids", "classes.json")
    assert_refused(cli("plot", "wordnet", "--store", tiny_store_path, "--out", tmp_path / "x.png", "--p", "0.1"),
                   "run `polysem wordnet` first")


@pytest.fixture
def tiny_store_path(fixture_store):
    return fixture_store("tiny-two-classes").store


# another process querying the store until told to stop: one line per look, the count or the error
QUERIES = """
import sys, time
from pathlib import Path
from polysem.query import Store
store, stop = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not stop.exists():
    if (store / "catalog.duckdb").exists():
        try:
            print(Store(store).sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"], flush=True)
        except Exception as error:
            print("error", str(error).replace("\\n", " "), flush=True)
    time.sleep(0.1)
"""


def test_queries_during_an_ingest_see_complete_parts(tmp_path, cli):
    """A slow ingest in this process, queried all along by another process (which needs no torch)."""
    root = map_logits(make_image_folder(tmp_path / "d", "train", {"a": 15, "b": 15}))
    store, stop = tmp_path / "s", tmp_path / "stop"
    env = {**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    queries = subprocess.Popen([sys.executable, "-c", QUERIES, str(store), str(stop)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert queries.stdout.readline().strip() == "ready"
        ingested = cli("ingest", root, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
                       "--transform", "tests.models:slow", "--batch-size", 2, "--rows-per-part", 4)
        stop.touch()
        looks = queries.communicate(timeout=60)[0].splitlines()
    finally:
        queries.kill()
        queries.wait()
    assert ingested.exit_code == 0, ingested.output
    assert queries.returncode == 0, looks
    for look in looks:  # only a clear "busy" refusal is acceptable
        assert look.isdigit() or (look.startswith("error ") and "another process holds its catalog" in look), look
    seen = [int(look) for look in looks if look.isdigit()]
    assert seen == sorted(seen) and all(n % 4 == 0 or n == 30 for n in seen)  # whole parts only
    assert len(set(seen)) >= 3  # it really ran alongside the ingest
    assert Store(store).sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"] == 30


def test_sql_allows_reading_statements_of_every_shape(cli, colour_store):
    for statement in ["DESCRIBE samples", "SUMMARIZE classes", "SHOW TABLES", "FROM classes",
                      "PIVOT (SELECT split, target FROM samples) ON split USING count(*)", "EXPLAIN SELECT 1"]:
        result = cli("sql", statement, "--store", colour_store, "--format", "csv")
        assert result.exit_code == 0, (statement, result.output)
    pivot = cli("sql", "PIVOT (SELECT split, target FROM samples) ON split USING count(*) ORDER BY target",
                "--store", colour_store, "--format", "csv")
    assert pivot.output.splitlines() == ["target,train,val", "0,6,4", "1,6,4", "2,6,4"]


def test_outputs_inside_the_store_are_refused(cli, colour_store):
    before = (colour_store / "classes.parquet").read_bytes()
    assert_refused(cli("export", "runs", "--out", colour_store / "classes.parquet", "--store", colour_store),
                   "inside the store")
    assert_refused(cli("sql", "SELECT 1", "--format", "parquet", "--out", colour_store / "samples" / "x.parquet",
                       "--store", colour_store), "inside the store")
    assert (colour_store / "classes.parquet").read_bytes() == before
    assert not (colour_store / "samples" / "x.parquet").exists()


@pytest.mark.parametrize("moment", ["binding the template's views", "defining the views"])
def test_a_part_removed_while_the_samples_view_is_bound_is_read_again(colour_store, monkeypatch, moment):
    """Binding the samples view reads every part's schema; a compaction that swaps the split's files at that moment
    removes one (the race of the test above): the reader lists the parts again, not a damaged store. It binds the
    view when it checks a copy made from the template, and when it prepares a copy (defining every view)."""
    import duckdb

    from polysem.query import store as store_module

    name = "view_columns" if moment == "binding the template's views" else "prepare_catalog"
    real, calls = getattr(store_module, name), []

    def swapped_once(conn, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise duckdb.IOException('IO Error: Cannot open file "samples/train/part-r000-gone.parquet": '
                                     "No such file or directory")
        return real(conn, *args, **kwargs)

    forget_prepared(monkeypatch)  # make this store's copy, though another test made one
    store_module.catalog_template()
    if moment == "defining the views":
        monkeypatch.setattr(store_module.Store, "_copy_from_template", lambda self, copy: False)
    monkeypatch.setattr(store_module, name, swapped_once)
    assert Store(colour_store).sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"] > 0
    assert len(calls) == (1 if name == "view_columns" else 2)  # the template's copy is left for preparing
