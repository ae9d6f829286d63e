"""Every statement polysem runs is a named block of sql/: each one runs on a real store as a method returning
what its mark says, a call with a missing or unknown parameter is refused naming the block, a malformed block
fails at load with file and line, and every block has a caller."""

import ast
import inspect
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from polysem.query import sqlfiles
from polysem.query.sqlfiles import (
    MARKS,
    READS_FILE,
    WRITES_FILE,
    SqlFileError,
    Statements,
    bind,
    load_statements,
    parameters,
    parse_sql,
)
from polysem.query.store import Reads, Store
from polysem.query.transaction import Transaction

# a plausible value for every parameter name the statements use
VALUES = {"split": "train", "class_id": 1, "limit": 5, "classes": [1, 2], "channel": 0, "tau": 0.03, "p": 0.75,
          "gamma": 0.5, "correct_only": False, "run_id": None, "group_id": "none", "weight": [1.0, 1.0, 0.0],
          "key": "schema_version", "first": 0, "last": 2, "concepts": [[1], [2]], "relevant_classes": [[1], [2]],
          "min_cosines": [0.9, None], "taus": [0.03], "ps": [0.75], "gammas": [0.5], "selection": "authors",
          "image_ids": [1], "channel_sums": [1.0], "totals": [4.0], "database": "system",
          "macros": True, "channels": 3, "input_len": 9, "root": "/nowhere"}
READS = sorted(name for name, block in load_statements().items() if block.file == READS_FILE)


@pytest.mark.parametrize("name", READS)
def test_every_read_runs_on_a_store(colour_store, name):
    store = Store(colour_store)
    block = load_statements()[name]
    params = {p: VALUES[p] for p in parameters(block) if p != "files"}
    if "files" in parameters(block):
        params["files"] = str(colour_store / "samples" / "train" / "layer=probe" / "*.parquet")
        if name == "parquet_repeated_images":  # the split's files twice: every image repeated
            params["files"] = [params["files"]] * 2
        with duckdb.connect() as con:  # as compaction runs them: with the macros it defines
            sqlfiles.define(con, "positive_sum", "sample_rows")
            assert getattr(Statements(con), name)(**params).num_rows
        return
    if "run_id" in params and name != "latest_visualizations":
        params["run_id"] = "no-such-run"
    got = getattr(store.reads, name)(**params)  # binds and runs: a typo in a block or a macro it calls fails here
    if block.mark == "":
        assert isinstance(got, pa.Table)
    else:  # '^': a dict or None; '$': the value itself
        assert not isinstance(got, pa.Table) and (block.mark == "$" or isinstance(got, (dict, type(None))))


def test_a_mark_says_what_the_method_returns(colour_store):
    store = Store(colour_store)
    classes = store.reads.class_list()
    assert isinstance(classes, pa.Table) and classes.num_rows == 3
    assert store.reads.class_count() == 3 and isinstance(store.reads.class_count(), int)  # '$': the value
    assert store.reads.split_images(split="train") == store.sql("SELECT count(*) FROM samples WHERE split = 'train'"
                                                               ).column(0)[0].as_py()
    assert store.reads.run_by_id(run_id="no-such-run") is None  # '^': one row or None
    assert store.reads.repeated_image(split="train") is None
    assert store.reads.meta_value(key="no-such-key") is None  # '$' with no row
    assert store.run("class_count") == 3  # the by-name form the methods call
    with store.transaction() as tx:
        assert tx.known_runs(run_ids=[]) == 0
        assert tx.referenced_artifacts().column_names == ["artifact"]


def test_the_methods_are_real_attributes_with_the_blocks_docs_and_parameters(colour_store):
    reads, tx = Store(colour_store).reads, Transaction(duckdb.connect())
    for obj, file in ((reads, READS_FILE), (tx, WRITES_FILE)):
        blocks = {name: b for name, b in load_statements().items() if b.file == file}
        assert set(blocks) <= set(dir(obj)) and set(blocks) <= set(dir(type(obj)))  # what completion lists
        for name, block in blocks.items():
            method = getattr(obj, name)
            assert method.__doc__.startswith(block.doc) and MARKS[block.mark] in method.__doc__
            wanted = ["rows"] if block.mark == "*!" else sorted(parameters(block))
            assert sorted(inspect.signature(method).parameters) == wanted
    assert isinstance(reads, Reads) and isinstance(tx, Transaction)
    assert not hasattr(tx, "class_count") and not hasattr(reads, "put_meta")  # each its own file's blocks
    assert "put_meta" in dir(Statements(duckdb.connect())) and "class_count" in dir(Statements(duckdb.connect()))


def test_completion_lists_the_methods(tmp_path):
    jedi = pytest.importorskip("jedi")  # what IPython and Jupyter complete with
    store, tx = Store(tmp_path / "store"), Transaction(duckdb.connect())  # nothing is opened to complete
    assert "run_by_id" in [c.name for c in jedi.Interpreter("store.reads.run_b", [{"store": store}]).complete()]
    assert "put_meta" in [c.name for c in jedi.Interpreter("tx.put_", [{"tx": tx}]).complete()]


def test_every_write_runs_in_a_transaction_that_is_rolled_back(colour_store):
    store = Store(colour_store)
    before = store.reads.split_summary().to_pylist()

    class Rollback(Exception):
        pass

    writes = sorted(name for name, block in load_statements().items() if block.file == WRITES_FILE)
    with pytest.raises(Rollback), store.transaction() as tx:
        for name in writes:
            block, _ = bind(name, {p: None for p in parameters(load_statements()[name])})
            tx.conn.execute(f"PREPARE check_{name} AS {block.sql}")  # binds against the catalog: a wrong column fails
        assert tx.put_meta(key="test_key", value='"x"') is None  # '!': nothing
        assert tx.insert_rho_score([]) is None  # '*!' with no rows: nothing to do
        raise Rollback
    assert store.reads.split_summary().to_pylist() == before


def test_a_call_with_a_missing_or_unknown_parameter_is_refused():
    with pytest.raises(SqlFileError, match=r"queries.sql:\d+: 'class_images' takes .*missing \['limit'\]"):
        bind("class_images", {"split": "train", "class_id": 1})
    with pytest.raises(SqlFileError, match=r"unknown \['colour'\]"):
        bind("class_count", {"colour": "red"})
    with pytest.raises(SqlFileError, match="no SQL statement named 'nope'"):
        bind("nope", {})


def test_a_method_call_is_checked_like_a_call_by_name(colour_store):
    store = Store(colour_store)
    with pytest.raises(SqlFileError, match=r"queries.sql:\d+: 'class_images' takes .*missing \['limit'\]"):
        store.reads.class_images(split="train", class_id=1)
    with pytest.raises(SqlFileError, match=r"'class_count' takes no parameters; unknown \['colour'\]"):
        store.reads.class_count(colour="red")
    with pytest.raises(SqlFileError, match=r"'split_images' takes its parameters by name: split_images\(split=...\)"):
        store.reads.split_images("train")
    with pytest.raises(AttributeError):
        store.reads.clas_count()  # a typo is no block
    with pytest.raises(SqlFileError, match="'put_meta' is a block of records.sql; call it on the transaction"):
        store.run("put_meta", key="k", value="1")
    tx = Transaction(duckdb.connect())
    with pytest.raises(SqlFileError, match="'class_count' is a block of queries.sql; call it as store.reads"):
        tx.run("class_count")
    with pytest.raises(SqlFileError, match=r"'insert_rho_score' is marked '\*!'.*pass it a list of rows"):
        tx.run("insert_rho_score", run_id="r", rho=0.0, objective_value=0.0, separated=True, n_sources=1,
               skipped=False)
    with pytest.raises(SqlFileError, match="'put_meta' is marked '!', not '\\*!'"):
        tx.run_many("put_meta", [{"key": "k", "value": "1"}])
    with pytest.raises(SqlFileError, match=r"'insert_rho_score' takes .*missing"):
        tx.insert_rho_score([{"run_id": "r"}])


@pytest.mark.parametrize("text, message", [
    ("-- name: two\n-- Two statements.\nSELECT 1; SELECT 2;\n", "holds 2 statements"),
    ("-- name: positional\n-- A positional parameter.\nSELECT * FROM t WHERE a = ?;\n", "name its parameters"),
    ("-- name: empty\n-- Nothing.\n", "is empty"),
    ("-- name: undocumented\nSELECT 1;\n", "no doc comment"),
    ("SELECT 1;\n", "outside a '-- name:' block"),
    ("-- name: odd%\n-- An unknown mark.\nSELECT 1;\n", "unknown mark '%'"),
    ("-- name: two words\n-- A name with a space.\nSELECT 1;\n", "is no block name"),
    ("-- name: write$\n-- A write marked as a read.\nDELETE FROM t;\n", r"is a write \(DELETE\); mark it '!'"),
    ("-- name: read!\n-- A read marked as a write.\nSELECT 1;\n", "is a SELECT marked '!'"),
    ("-- name: reads*!\n-- A read marked as a write per row.\nSELECT 1;\n", "is a SELECT marked '\\*!'"),
])
def test_a_malformed_statement_block_fails_at_load_with_file_and_line(text, message):
    with pytest.raises(SqlFileError, match=message) as error:
        parse_sql(text, "bad.sql", "statement")
    assert str(error.value).startswith("bad.sql:")


def test_the_marks_each_parse():
    text = "".join(f"-- name: b{i}{mark}\n-- A block.\n{'DELETE FROM t' if '!' in mark else 'SELECT 1'};\n"
                   for i, mark in enumerate(MARKS))
    assert [block.mark for block in parse_sql(text, "ok.sql", "statement")] == list(MARKS)


def test_only_statements_are_marked():
    with pytest.raises(SqlFileError, match=r"^v.sql:1: block 'v' is marked '\$'"):
        parse_sql("-- name: v$\n-- A view.\nCREATE VIEW v AS SELECT 1;\n", "v.sql")


def test_migrations_are_numbered_one_after_the_other():
    numbers = [n for n, _ in sqlfiles.load_migrations()]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) and numbers[0] == 3
    with pytest.raises(SqlFileError, match="must be named migrate_N"):
        parse_sql("-- name: upgrade\n-- Wrong name.\nSELECT 1;\n", "m.sql", "migration")


SOURCES = ("polysem", "ingest", "query")  # the code that runs statements (tests and benchmarks do not count)
BY_NAME = {"run", "run_many", "run_statement"}  # the calls that name a block: store.run("class_list"), ...


def _calls() -> tuple[set[str], set[str]]:
    """Every method called in SOURCES (`store.reads.class_count()`, `tx.put_meta(...)`) and every text passed to
    a by-name call (`store.run("class_list")`, `run_statement(con, "parquet_image_ids", ...)`); and the methods
    called on a `reads` (`store.reads.NAME(...)`)."""
    root = Path(__file__).resolve().parents[1]
    called: set[str] = set()
    on_reads: set[str] = set()
    for path in sorted(p for folder in SOURCES for p in (root / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            called.add(function)
            if function in BY_NAME:
                called |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
            if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Attribute) \
                    and node.func.value.attr == "reads":
                on_reads.add(node.func.attr)
    return called, on_reads


CALLED, ON_READS = _calls()


@pytest.mark.parametrize("name", sorted(load_statements()))
def test_every_block_has_a_caller(name):
    block = load_statements()[name]
    assert name in CALLED, (f"the SQL block '{name}' ({block.file}:{block.line}) has no caller in "
                            f"{', '.join(f'{s}/' for s in SOURCES)}: call it (store.reads.{name}(...), "
                            f"tx.{name}(...)) or remove it")


def test_every_read_the_code_calls_is_a_block():
    """To mypy a method of `store.reads` is any callable: a misspelt one is caught here, before it runs."""
    assert sorted(ON_READS - set(READS)) == [] and ON_READS
