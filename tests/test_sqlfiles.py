"""Every statement polysem runs is a named block of sql/: each one runs on a real store, a call with a
missing or unknown parameter is refused naming the block, a malformed block fails at load with file and line."""

import pytest

from polysem.query import sqlfiles
from polysem.query.sqlfiles import SqlFileError, bind, load_statements, parameters, parse_sql
from polysem.query.store import Store

# a plausible value for every parameter name the statements use
VALUES = {"split": "train", "class_id": 1, "limit": 5, "classes": [1, 2], "channel": 0, "tau": 0.03, "p": 0.75,
          "gamma": 0.5, "correct_only": False, "run_id": None, "group_id": "none", "weight": [1.0, 1.0, 0.0],
          "key": "schema_version", "first": 0, "last": 2, "concepts": [[1], [2]], "relevant_classes": [[1], [2]],
          "min_cosines": [0.9, None], "taus": [0.03], "ps": [0.75], "gammas": [0.5], "selection": "authors",
          "image_ids": [1], "channel_sums": [1.0], "totals": [4.0]}
READS = sorted(name for name, block in load_statements().items() if block.file == "queries.sql")


@pytest.mark.parametrize("name", READS)
def test_every_read_runs_on_a_store(colour_store, name):
    store = Store(colour_store)
    params = {p: VALUES[p] for p in parameters(load_statements()[name]) if p != "files"}
    if "files" in parameters(load_statements()[name]):
        params["files"] = str(colour_store / "samples" / "train" / "*.parquet")
        if name == "parquet_repeated_images":  # the split's files twice: every image repeated
            params["files"] = [params["files"]] * 2
        import duckdb

        with duckdb.connect() as con:  # as compaction runs them: with the macros it defines
            sqlfiles.define(con, "positive_sum", "sample_rows")
            assert sqlfiles.run_statement(con, name, **params).fetchall()
        return
    if "run_id" in params and name != "latest_visualizations":
        params["run_id"] = "no-such-run"
    store.run(name, **params)  # binds and runs: a typo in a block or a macro it calls fails here


def test_every_write_runs_in_a_transaction_that_is_rolled_back(colour_store):
    store = Store(colour_store)
    before = store.run("split_summary").to_pylist()

    class Rollback(Exception):
        pass

    writes = sorted(name for name, block in load_statements().items() if block.file == "records.sql")
    with pytest.raises(Rollback), store.transaction() as tx:
        for name in writes:
            sql, _ = bind(name, {p: None for p in parameters(load_statements()[name])})
            tx.conn.execute(f"PREPARE check_{name} AS {sql}")  # binds against the catalog: a wrong column fails
        raise Rollback
    assert store.run("split_summary").to_pylist() == before


def test_a_call_with_a_missing_or_unknown_parameter_is_refused():
    with pytest.raises(SqlFileError, match=r"queries.sql:\d+: 'class_images' takes .*missing \['limit'\]"):
        bind("class_images", {"split": "train", "class_id": 1})
    with pytest.raises(SqlFileError, match=r"unknown \['colour'\]"):
        bind("class_count", {"colour": "red"})
    with pytest.raises(SqlFileError, match="no SQL statement named 'nope'"):
        bind("nope", {})


@pytest.mark.parametrize("text, message", [
    ("-- name: two\n-- Two statements.\nSELECT 1; SELECT 2;\n", "holds 2 statements"),
    ("-- name: positional\n-- A positional parameter.\nSELECT * FROM t WHERE a = ?;\n", "name its parameters"),
    ("-- name: empty\n-- Nothing.\n", "is empty"),
    ("-- name: undocumented\nSELECT 1;\n", "no doc comment"),
    ("SELECT 1;\n", "outside a '-- name:' block"),
])
def test_a_malformed_statement_block_fails_at_load_with_file_and_line(text, message):
    with pytest.raises(SqlFileError, match=message) as error:
        parse_sql(text, "bad.sql", "statement")
    assert str(error.value).startswith("bad.sql:")


def test_migrations_are_numbered_one_after_the_other():
    numbers = [n for n, _ in sqlfiles.load_migrations()]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) and numbers[0] == 3
    with pytest.raises(SqlFileError, match="must be named migrate_N"):
        parse_sql("-- name: upgrade\n-- Wrong name.\nSELECT 1;\n", "m.sql", "migration")
