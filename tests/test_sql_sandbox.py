"""User SQL cannot write: escape attempts are refused with one line and leave every store file as it was."""

import hashlib
from pathlib import Path

import pytest
from polysem.query import Store

from tests.helpers import assert_refused

OUTSIDE = "/tmp/polysem-escape"  # any file an attempt manages to write would appear here or in the store

ESCAPES = [
    # COPY and EXPLAIN forms (issue #8: EXPLAIN ANALYZE COPY overwrote a part)
    "COPY (SELECT 3 AS target) TO 'samples/train/part-r000-evil.parquet'",
    f"COPY classes TO '{OUTSIDE}.csv'",
    "EXPLAIN ANALYZE COPY (SELECT * FROM samples) TO 'samples/train/evil.parquet' (FORMAT parquet)",
    "EXPLAIN COPY classes TO 'x.csv'",
    "explain   analyze\n copy classes to 'x.csv'",
    "EXPLAIN /* a comment */ ANALYZE -- another\n COPY classes TO 'x.csv'",
    "EXPLAIN ANALYSE COPY classes TO 'x.csv'",
    "EXPLAIN (FORMAT json) COPY classes TO 'x.csv'",
    "EXPLAIN ANALYZE INSTALL httpfs",
    "EXPLAIN ANALYZE DELETE FROM runs",
    "EXPLAIN EXPLAIN ANALYZE COPY classes TO 'x.csv'",
    f"COPY (SELECT 'import os' AS line) TO '{OUTSIDE}.py' (HEADER false)",
    f"EXPORT DATABASE '{OUTSIDE}-db'",
    # attaching, extensions, remote files
    f"ATTACH '{OUTSIDE}.duckdb' AS evil",
    "ATTACH 'catalog.duckdb' AS cat",
    "DETACH memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL httpfs FROM community",
    "SELECT * FROM read_csv('https://example.com/labels.csv')",
    "SELECT * FROM read_parquet('s3://bucket/evil.parquet')",
    # configuration
    "SET enable_external_access = true",
    "SET autoinstall_known_extensions = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "USE memory",
    # several statements, comments hiding them
    "SELECT 1; COPY classes TO 'x.csv'",
    "SELECT 1 /* ; */; DROP VIEW samples",
    "-- SELECT 1\nCOPY classes TO 'x.csv'",
    "/* SELECT */ DELETE FROM runs",
    # data-modifying statements, also inside a CTE
    "DELETE FROM runs",
    "INSERT INTO runs SELECT * FROM runs",
    "UPDATE store_meta SET value = '1'",
    "DROP VIEW samples",
    "CREATE TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW samples AS SELECT 1",
    "CREATE OR REPLACE MACRO arv_of(a, b, c) AS 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "ALTER TABLE runs ADD COLUMN x INT",
    "WITH d AS (DELETE FROM runs RETURNING *) SELECT * FROM d",
    "WITH i AS (INSERT INTO store_meta VALUES ('k', '1') RETURNING *) SELECT * FROM i",
    "WITH u AS MATERIALIZED (UPDATE store_meta SET value = '2' RETURNING *) SELECT count(*) FROM u",
    "EXPLAIN ANALYZE WITH d AS (DELETE FROM runs RETURNING *) SELECT * FROM d",
    # SQL given as a string to a table function
    "SELECT * FROM query('COPY classes TO ''x.csv''')",
    "SELECT * FROM query('WITH d AS (DELETE FROM runs RETURNING *) SELECT * FROM d')",
    "SELECT * FROM query_table('runs')",
    "PIVOT (FROM query('SELECT 1 AS a, 2 AS b')) ON a USING count(*)",
    "VACUUM",
    "ANALYZE",
]


def store_files(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def test_there_are_enough_attempts():
    assert len(set(ESCAPES)) == len(ESCAPES) >= 30


@pytest.fixture
def sandbox_store(fixture_store):
    """A ColourNet store (train, 3 images a class) for each attempt, which must leave it byte-identical."""
    return fixture_store("colour-train-3").store


@pytest.mark.parametrize("statement", ESCAPES)
def test_escape_attempt_is_refused_and_writes_nothing(cli, sandbox_store, statement, tmp_path, monkeypatch):
    before = store_files(sandbox_store)
    monkeypatch.chdir(tmp_path)  # relative names would land here
    result = cli("sql", "--store", sandbox_store, "--", statement)  # "--": a statement may start with a comment
    assert_refused(result)
    with pytest.raises(Exception):
        Store(sandbox_store).sql(statement)
    assert store_files(sandbox_store) == before
    assert list(tmp_path.iterdir()) == []
    assert not any(Path("/tmp").glob("polysem-escape*"))


def test_reads_still_work_and_local_files_are_readable(sandbox_store, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("class_id,label\n0,sky\n2,fire\n")
    store = Store(sandbox_store)
    rows = store.sql("SELECT c.name, l.label FROM classes c JOIN read_csv($f) l USING (class_id) ORDER BY 1",
                     {"f": str(labels)}).to_pylist()
    assert rows == [{"name": "blue", "label": "sky"}, {"name": "red", "label": "fire"}]
    assert store.sql("SELECT ? + 1 AS x", [41]).to_pylist() == [{"x": 42}]
    assert store.sql("EXPLAIN ANALYZE SELECT count(*) FROM samples").num_rows >= 1
    assert store.sql("WITH a AS (SELECT 1 AS x) SELECT * FROM a").to_pylist() == [{"x": 1}]
    assert not hasattr(store, "query")  # one way to run user SQL: `sql` (the old alias `query` is gone)


def test_configuration_is_locked_on_the_query_connection(sandbox_store):
    with Store(sandbox_store).connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('lock_configuration', "
            "'autoinstall_known_extensions', 'autoload_known_extensions', 'allow_community_extensions')").fetchall())
        assert settings == {"lock_configuration": "true", "autoinstall_known_extensions": "false",
                            "autoload_known_extensions": "false", "allow_community_extensions": "false"}
        with pytest.raises(Exception, match="locked"):
            conn.execute("SET autoload_known_extensions = true")
