"""Readers never lock out writers, a busy catalog loses no work, damaged files and bad outputs get one line."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet
import pytest
from polysem.query import Store
from polysem.query import catalog as catalog_module
from polysem.query import store as store_module
from polysem.query import layout

from polysem.errors import StoreBusy
from tests.helpers import ROOT, assert_refused, forget_prepared, snapshot, wait_until_the_query_runs


@pytest.fixture
def built(fixture_store):
    """This test's copy of the ColourNet store (train and val) and its images (built[1]: shared, read only)."""
    return fixture_store("colour")


@pytest.fixture
def store(built) -> Path:
    return built.store


def python(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


HOLD_WRITER = ("import sys, time, duckdb; c = duckdb.connect(sys.argv[1]); print('holding', flush=True); "
               "time.sleep(60)")


# -- 4. readers and writers ----------------------------------------------------------------

def test_a_long_query_does_not_block_a_writer(store):
    reader = python("import sys; from polysem.query import Store; "
                    "Store(sys.argv[1]).sql('SELECT sum(hash(i)) FROM range(3000000000) t(i), (SELECT count(*) FROM samples)')",
                    store)
    try:
        wait_until_the_query_runs(reader)  # it takes far longer than the rest of this test
        start = time.monotonic()
        with Store(store).connect(write=True) as conn:
            conn.execute("INSERT INTO class_similarity VALUES (0, 1, 0.5)")
        assert time.monotonic() - start < 3  # was: waited for the reader, then failed after 30 s
        assert reader.poll() is None  # the writer did not wait for the reader to finish
    finally:
        reader.kill()
        reader.wait()
    assert Store(store).sql("SELECT * FROM class_similarity").to_pylist() == [
        {"class1": 0, "class2": 1, "path_similarity": 0.5}]


def test_a_waiting_writer_says_who_holds_the_catalog(store, monkeypatch):
    holder = python(HOLD_WRITER, store / "catalog.duckdb")
    try:
        assert holder.stdout.readline().strip() == "holding"
        monkeypatch.setattr(catalog_module, "WRITE_WAIT_S", 0.3)
        with pytest.raises(StoreBusy, match=rf"process {holder.pid} \(python"):
            with Store(store).connect(write=True):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_disentangle_keeps_its_model_when_the_catalog_stays_busy(cli, store, monkeypatch):
    import polysem.method.runs as disentangling

    holders = []
    keep = disentangling.write_pending

    def then_hold_the_catalog(*args):  # another writer arrives just as the run is finished
        path = keep(*args)
        holders.append(python(HOLD_WRITER, store / "catalog.duckdb"))
        assert holders[0].stdout.readline().strip() == "holding"
        return path

    monkeypatch.setattr(disentangling, "write_pending", then_hold_the_catalog)
    monkeypatch.setattr(catalog_module, "WRITE_WAIT_S", 0.3)
    try:
        result = cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", store)
        errors = [line for line in result.output.splitlines() if "Error" in line]  # progress bars come first
        assert result.exit_code == 2 and len(errors) == 1 and errors[0].startswith("Error: "), result.output
        assert all(f in errors[0] for f in (f"process {holders[0].pid}", "kept in", "polysem check --repair"))
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    artifacts = list((store / "artifacts").glob("*.pt"))
    assert len(artifacts) == 1 and artifacts[0].with_name(artifacts[0].name + ".pending.json").is_file()
    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0, repaired.output
    runs = Store(store).sql("SELECT run_id, artifact, channel FROM runs").to_pylist()
    assert [(r["artifact"], r["channel"]) for r in runs] == [(f"artifacts/{artifacts[0].name}", 0)]
    assert Store(store).sql("SELECT count(*) AS n FROM rho_scores").to_pylist() == [{"n": 20}]
    assert not list((store / "artifacts").glob("*.pending.json"))
    with Store(store).connect(write=True):  # recording twice is impossible: the pending file is gone
        pass
    assert Store(store).sql("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 1}]


def test_the_query_connection_is_reused_until_the_catalog_changes(store):
    target = Store(store)
    target.sql("SELECT 1")
    first = target._reader_conn
    target.sql("SELECT 2")
    assert target._reader_conn is first
    with target.connect(write=True) as conn:
        conn.execute("INSERT INTO class_similarity VALUES (0, 2, 0.25)")
    assert target.sql("SELECT count(*) AS n FROM class_similarity").to_pylist() == [{"n": 1}]
    assert target._reader_conn is not first




def test_store_objects_of_one_process_see_each_others_writes_and_another_processes(store):
    """Store objects of a process share the prepared copy of a catalog state; a write through any of them, or
    by another process, is seen by every one at its next read."""
    count = "SELECT count(*) AS n FROM class_similarity"
    first, second = Store(store), Store(store)
    assert first.sql(count).to_pylist() == second.sql(count).to_pylist() == [{"n": 0}]
    with first.connect(write=True) as conn:
        conn.execute("INSERT INTO class_similarity VALUES (0, 2, 0.25)")
    assert Store(store).sql(count).to_pylist() == [{"n": 1}]
    assert second.sql(count).to_pylist() == [{"n": 1}]
    writer = python("import sys, duckdb; c = duckdb.connect(sys.argv[1]); "
                    "c.execute('INSERT INTO class_similarity VALUES (1, 2, 0.5)'); c.close()",
                    store / "catalog.duckdb")
    assert writer.wait(timeout=60) == 0, writer.stderr.read()
    assert first.sql(count).to_pylist() == Store(store).sql(count).to_pylist() == [{"n": 2}]


def test_store_objects_of_one_state_share_a_database_and_a_copy_reads_its_own_files(store, tmp_path):
    """Store objects reading one catalog state share its read-only database; a copy of the store, though its
    snapshot is the same, gets its own: its views read the copy's files, which outlive the original's."""
    count = "SELECT count(*) AS n FROM samples"
    first, second = Store(store), Store(store)
    n = first.sql(count).to_pylist()
    assert second.sql(count).to_pylist() == n and second._reader_conn is first._reader_conn
    copy = shutil.copytree(store, tmp_path / "copy")
    shutil.rmtree(store / "samples")
    assert Store(copy).sql(count).to_pylist() == n

def test_threads_reading_one_store_through_store_objects_of_their_own_all_get_the_answer(store):
    """Store objects reading one state share one DuckDB connection, which refuses a second call at once: every read
    runs on a cursor of its own, so six threads reading through Store objects of their own all get the answer."""
    import threading

    count = "SELECT count(*) AS n FROM samples"
    n = Store(store).sql(count).to_pylist()
    results, errors = [], []

    def work():
        for _ in range(25):
            try:
                results.append(Store(store).sql(count).to_pylist())
            except Exception as error:  # noqa: BLE001 -- every failure is the finding
                errors.append(repr(error))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [n] * 150


def test_a_copy_of_a_store_opens_from_the_prepared_bytes_unless_a_parquet_file_differs(store, tmp_path, monkeypatch,
                                                                                        cli):
    """The prepared copy of a catalog serves every store holding the same catalog bytes and Parquet files (a copy
    of the store); a copy whose file differs in a column's type is refused, the file named, before any copy is
    made or prepared."""
    made = made_copies(monkeypatch)
    count = "SELECT count(*) AS n FROM samples"
    n = Store(store).sql(count).to_pylist()
    assert made == ["template"]
    copy = shutil.copytree(store, tmp_path / "copy")  # copy2: sizes and modification times kept
    assert Store(copy).sql(count).to_pylist() == n and made == ["template"]
    rewrite_column(train_part(copy), "positive_sum", lambda table: table.column("positive_sum").cast("string"))
    assert_refused(cli("sql", count, "--store", copy), "samples/train/", "its column positive_sum is string, not double",
                   "polysem check --repair")
    assert made == ["template"]


def every_object(store: Store) -> dict[str, list]:
    """The rows of every table and view of the store's reader (views of the layer it works on)."""
    names = [row["name"] for row in store.sql(
        "SELECT table_name AS name FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database() "
        "UNION SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").to_pylist()]
    assert {"runs", "samples", "layer_samples", "class_means", "arv"} <= set(names)
    return {name: sorted(map(str, store.sql(f'SELECT * FROM "{name}"').to_pylist())) for name in names}


def made_copies(monkeypatch) -> list[str]:
    """How each reader's catalog copy is made from now on, one entry per copy: 'template' (polysem's template
    catalog given the copy's rows) or 'prepared' (every view and macro defined in the copy)."""
    made: list[str] = []
    real = Store._copy_from_template

    def from_template(self, copy):
        made.append("template" if real(self, copy) else "prepared")
        return made[-1] == "template"

    monkeypatch.setattr(Store, "_copy_from_template", from_template)
    forget_prepared(monkeypatch)
    return made


def whole_catalog(store: Store) -> dict[str, list]:
    """The reader's catalog as DuckDB describes it (every view's SQL and columns, every macro, table and column) and
    the rows of every table and view."""
    described = store.sql(
        "SELECT 'view' AS kind, view_name AS name, sql AS text FROM duckdb_views() WHERE NOT internal UNION ALL "
        "SELECT function_type, function_name, macro_definition || ' ' || parameters::VARCHAR FROM duckdb_functions() "
        "WHERE NOT internal AND function_type IN ('macro', 'table_macro') UNION ALL "
        "SELECT 'table', table_name, sql FROM duckdb_tables() WHERE database_name = current_database() UNION ALL "
        "SELECT 'column', table_name || '.' || column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = current_database() ORDER BY ALL").to_pylist()
    return {"catalog": described, **every_object(store)}


def test_every_catalog_state_reads_as_a_copy_prepared_from_scratch(fixture_store, monkeypatch):
    """A reader's copy made from the template holds what defining every view and macro in a copy of the catalog gives:
    the same views, columns, macros, tables and rows, before and after writes (a store with a run)."""
    store = fixture_store("opponent-colour-run").store
    made = made_copies(monkeypatch)
    states = []
    for statement in (None, "INSERT INTO class_similarity VALUES (0, 2, 0.25), (1, 2, 0.5)",
                      "DELETE FROM class_similarity WHERE class1 = 1",
                      # the same digest, spelled with spaces around it: preparing writes it again as polysem spells it
                      "UPDATE store_meta SET value = ' ' || value::VARCHAR || ' ' WHERE key = 'sql_digest'"):
        if statement is not None:
            with Store(store).connect(write=True) as conn:
                conn.execute(statement)
        states.append(whole_catalog(Store(store)))
    assert made == ["template"] * 4
    monkeypatch.setattr(Store, "_copy_from_template", lambda self, copy: False)
    forget_prepared(monkeypatch)
    prepared = whole_catalog(Store(store))
    assert states[-1] == prepared and states[0] != prepared
    assert {"samples", "arv", "polysemantic_pairs"} <= {row["name"] for row in prepared["catalog"]}
    assert prepared["runs"] and prepared["class_similarity"] == [str({"class1": 0, "class2": 2, "path_similarity": 0.25})]


def test_a_store_whose_files_have_a_column_more_is_prepared_and_reads_it(store, tmp_path, monkeypatch):
    """A part with a column polysem never writes changes what the samples view binds to: such a store is prepared
    from scratch, and reads as preparing gives (the column shows in samples)."""
    import pyarrow.parquet as pq

    made = made_copies(monkeypatch)
    Store(store).sql("SELECT 1")
    changed = shutil.copytree(store, tmp_path / "changed")
    part = train_part(changed)
    table = pq.read_table(part)
    pq.write_table(table.append_column("extra", pa.array([7] * len(table), pa.int32())), part)
    assert Store(changed).sql("SELECT DISTINCT extra FROM samples WHERE split = 'train'").to_pylist() == [{"extra": 7}]
    assert made == ["template", "prepared"]


def test_the_file_views_are_the_views_that_read_the_stores_files():
    """FILE_VIEWS (what a copy made from the template is checked by) are exactly the views whose own SQL reads Parquet
    files, directly or through a table macro that does."""
    from polysem.query.sqlfiles import load_blocks

    blocks = load_blocks()
    reading = {b.name for b in blocks if b.kind == "MACRO" and "read_parquet(" in b.sql}
    assert reading == {"sample_rows"}
    views = {b.name for b in blocks if b.kind == "VIEW" and ("read_parquet(" in b.sql or
                                                              any(f"{name}(" in b.sql for name in reading))}
    assert set(store_module.FILE_VIEWS) == views


def test_a_received_catalogs_macros_and_types_never_shadow_duckdbs_nor_reach_another_store(store, tmp_path, monkeypatch):
    """A received catalog may hold a macro or a type named like one of DuckDB's (`getvariable`, `json`), which
    DuckDB would take first: a reader's copy drops them, so the received store reads as its original does, and
    a store read after it by the same process never inherits them."""
    forget_prepared(monkeypatch)
    count = "SELECT count(*) AS n FROM layer_samples"
    mine = shutil.copytree(store, tmp_path / "mine")
    received = shutil.copytree(store, tmp_path / "received")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        conn.execute("CREATE MACRO getvariable(name) AS 'no-such-layer'")
        conn.execute("CREATE TYPE json AS INTEGER")
        conn.execute("CREATE MACRO planted() AS 42")
        conn.execute("CREATE VIEW planted_view AS SELECT 42 AS answer")
    before = snapshot(received)
    n = Store(store).sql(count).to_pylist()
    assert n[0]["n"] > 0
    assert Store(received).sql(count).to_pylist() == n
    assert Store(mine).sql(count).to_pylist() == n
    with Store(mine).connect(write=True) as conn:  # a new state of mine, read after the received store
        conn.execute("INSERT INTO class_similarity VALUES (0, 2, 0.25)")
    assert Store(mine).sql(count).to_pylist() == n
    assert Store(mine).sql("SELECT (SELECT count(*) FROM duckdb_functions() WHERE function_name = 'planted') + "
                           "(SELECT count(*) FROM duckdb_views() WHERE view_name = 'planted_view') AS n"
                           ).to_pylist() == [{"n": 0}]
    assert Store(received).sql("SELECT answer FROM planted_view").to_pylist() == [{"answer": 42}]  # kept: data
    assert snapshot(received) == before


def test_a_received_catalogs_comments_stay_its_own(store, tmp_path, monkeypatch):
    """Comments on a received catalog's tables and columns are its data, read as they are; a store read after it
    by the same process never shows them."""
    forget_prepared(monkeypatch)
    comments = ("SELECT (SELECT list(comment) FROM duckdb_tables() WHERE comment IS NOT NULL) AS tables, "
                "(SELECT list(comment) FROM duckdb_columns() WHERE comment IS NOT NULL) AS columns")
    received = shutil.copytree(store, tmp_path / "received")
    clean = shutil.copytree(store, tmp_path / "clean")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        conn.execute("COMMENT ON TABLE store_meta IS 'planted'")
        conn.execute("COMMENT ON COLUMN runs.run_id IS 'planted too'")
    assert Store(received).sql(comments).to_pylist() == [{"tables": ["planted"], "columns": ["planted too"]}]
    with Store(clean).connect(write=True) as conn:  # a new state of the same files as the received store's
        conn.execute("INSERT INTO class_similarity VALUES (0, 2, 0.25)")
    assert Store(clean).sql(comments).to_pylist() == [{"tables": None, "columns": None}]


FOREIGN_OBJECTS = {
    "a macro name that ends its quotes": [
        """CREATE MACRO "relative_attribution""; CREATE MACRO getvariable(n) AS 'zz'; COPY (SELECT 1 AS x) TO """
        """'{escape}'; DROP MACRO IF EXISTS ""q"() AS 1"""],
    "overloads": ["CREATE MACRO foo(a) AS a, (a, b) AS a + b", "CREATE MACRO getvariable(a, b) AS a"],
    "another schema": ["CREATE SCHEMA s", "CREATE MACRO s.getvariable(name) AS 'x'", "CREATE TYPE s.t AS INTEGER",
                       "CREATE VIEW s.samples AS SELECT 1 AS image_id"],
    "a type a column uses": ["CREATE TYPE mood AS ENUM ('a', 'b')", "CREATE TABLE feelings (m mood)"],
    "a quote in a name": ['CREATE MACRO "a""b"() AS 1', 'CREATE TYPE "t""y" AS INTEGER'],
}


@pytest.mark.parametrize("objects", list(FOREIGN_OBJECTS))
def test_a_received_catalogs_own_objects_are_set_aside_by_name_alone(store, tmp_path, cli, objects):
    """Whatever a received catalog's macros and types are called, or wherever they stand, a reader reads the store
    as its original, runs none of their text, writes nothing, and a store read after it reads as it should."""
    escape = tmp_path / "escaped.csv"
    received = shutil.copytree(store, tmp_path / "received")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        for statement in FOREIGN_OBJECTS[objects]:
            conn.execute(statement.replace("{escape}", str(escape)))
    before = snapshot(received)
    count = "SELECT count(*) AS n FROM layer_samples"
    n = Store(store).sql(count).to_pylist()
    result = cli("sql", count, "--store", received, "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout) == n, result.output
    assert Store(received).sql(count).to_pylist() == n
    clean = shutil.copytree(store, tmp_path / "clean")  # the same files as the received store's
    with Store(clean).connect(write=True) as conn:
        conn.execute("INSERT INTO class_similarity VALUES (0, 2, 0.25)")
    assert Store(clean).sql(count).to_pylist() == n
    assert snapshot(received) == before and not escape.exists()


DEPENDED_ON = {
    "a default": ("macro 'getvariable'", ["CREATE MACRO getvariable(x) AS 'nope'",
                                         "CREATE TABLE keep (a VARCHAR DEFAULT getvariable('x'))"]),
    "a check": ("macro 'getvariable'", ["CREATE MACRO getvariable(x) AS 'nope'",
                                       "CREATE TABLE keep (a VARCHAR CHECK (a <> getvariable('x')))"]),
    "a generated column": ("macro 'getvariable'", ["CREATE MACRO getvariable(x) AS 'nope'",
                                                  "CREATE TABLE keep (a VARCHAR, b VARCHAR AS (getvariable(a)))"]),
    "a column's type": ("type 'json'", ["CREATE TYPE json AS INTEGER", "CREATE TABLE keep (a json)"]),
    # a name DuckDB does not know, but a check of polysem's own table: writing store_meta would run it
    "a check of store_meta": ("macro 'key_ok'", [
        "CREATE MACRO key_ok(k) AS k IS NOT NULL", "CREATE TABLE kept AS SELECT * FROM store_meta",
        "DROP TABLE store_meta", "CREATE TABLE store_meta (key VARCHAR PRIMARY KEY CHECK (key_ok(key)), value JSON)",
        "INSERT INTO store_meta SELECT * FROM kept", "DROP TABLE kept"]),
}


@pytest.mark.parametrize("case", list(DEPENDED_ON))
def test_a_received_macro_or_type_a_table_depends_on_is_refused_in_one_line(store, tmp_path, cli, case):
    """A macro or type shadowing one of DuckDB's that a table depends on cannot be set aside, nor can a macro a check
    of polysem's own table calls: reading and writing are refused in one line naming it, the store unchanged
    (reading through a getvariable macro drops every row of a layer).
    One of a name DuckDB does not know shadows nothing and stays (tested above: a type a column uses)."""
    named, statements = DEPENDED_ON[case]
    received = shutil.copytree(store, tmp_path / "received")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        for statement in statements:
            conn.execute(statement)
    before = snapshot(received)
    assert_refused(cli("sql", "SELECT count(*) FROM layer_samples", "--store", received), named, "drop it with DuckDB")
    assert_refused(cli("screen", "--concepts", "--store", received), named, "drop it with DuckDB")
    assert snapshot(received) == before


def test_a_received_macro_named_like_a_duckdb_operator_never_runs(store, tmp_path, cli, monkeypatch):
    """A received catalog's macro named like one of DuckDB's operators or functions (`->>`, with which polysem's SQL
    reads store_meta, `replace`, `current_database`) would run inside polysem's SQL, where it could read any file,
    and a schema named like the database polysem lists a catalog from could hide them. A reader sets it
    aside before any of polysem's SQL runs on the catalog, from the template or preparing alike, and reads the store
    as its original; a writer refuses the store in one line naming it, the store unchanged."""
    received = shutil.copytree(store, tmp_path / "received")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        conn.execute("""CREATE MACRO "->>"(a, b) AS 'planted'""")
        conn.execute("CREATE MACRO replace(a, b, c) AS 'planted'")
        conn.execute("CREATE MACRO current_database() AS 'planted'")
    unread = snapshot(received)
    count = "SELECT count(*) AS n, min(layer) AS layer FROM layer_samples"
    n = Store(store).sql(count).to_pylist()
    made = made_copies(monkeypatch)
    assert Store(received).sql(count).to_pylist() == n and made == ["template"]
    monkeypatch.setattr(Store, "_copy_from_template", lambda self, copy: False)
    forget_prepared(monkeypatch)
    assert Store(received).sql(count).to_pylist() == n and snapshot(received) == unread
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        # a schema named like the database a writer lists the catalog from, whose table macro would hide every macro
        conn.execute("CREATE SCHEMA polysem_listing")
        conn.execute("CREATE MACRO polysem_listing.duckdb_functions() AS TABLE SELECT * FROM duckdb_functions() "
                     "WHERE false")
    before = snapshot(received)
    assert_refused(cli("screen", "--concepts", "--store", received),
                   "macro '->>', macro 'current_database', macro 'replace'", "drop it with DuckDB")
    assert snapshot(received) == before


def test_ctrl_c_while_a_copy_takes_its_rows_leaves_every_later_read_working(store, tmp_path, monkeypatch):
    """A Ctrl-C while the template takes a catalog's rows (in a transaction on the process's scratch connection)
    stops that read; the scratch connection is left as it was, so every later read, of any store, works."""
    from polysem.query import meta as meta_module
    from polysem.query.sandbox import scratch

    other = shutil.copytree(store, tmp_path / "other")
    count = "SELECT count(*) AS n FROM samples"
    real, calls = meta_module.identifier, []

    def interrupted(name):
        calls.append(name)
        if name == "runs":  # one of the tables the rows are copied into
            raise KeyboardInterrupt
        return real(name)

    forget_prepared(monkeypatch)
    monkeypatch.setattr(meta_module, "identifier", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Store(store).sql(count)
    monkeypatch.setattr(meta_module, "identifier", real)
    assert "runs" in calls
    with scratch() as conn:
        assert conn.execute("SELECT current_database(), current_setting('file_search_path')").fetchall() == [("memory", "")]
        assert conn.execute("SELECT database_name FROM duckdb_databases() WHERE NOT internal").fetchall() == [("memory",)]
    assert Store(store).sql(count).to_pylist() == Store(other).sql(count).to_pylist() != [{"n": 0}]
    with pytest.raises(KeyboardInterrupt), scratch() as conn:  # one stopped in the middle of its own clean-up
        conn.execute("ATTACH ':memory:' AS left_behind")
        conn.execute("USE left_behind")
        conn.execute("SET file_search_path = ?", [str(store)])
        conn.begin()
        raise KeyboardInterrupt
    with scratch() as conn:
        assert conn.execute("SELECT current_database(), current_setting('file_search_path')").fetchall() == [("memory", "")]
        assert conn.execute("SELECT database_name FROM duckdb_databases() WHERE NOT internal").fetchall() == [("memory",)]
    assert Store(other).sql(count).to_pylist() != [{"n": 0}]


def test_a_comma_or_backslash_in_the_stores_path_or_the_temporary_folder_is_refused_in_one_line(
        data_dir, tmp_path, cli, monkeypatch):
    """DuckDB splits its file_search_path, where the views find the store's files, on commas, and reads a backslash
    in a path as a slash (another file): a store whose path holds either is refused before anything is written,
    and so is a temporary folder holding one, where the catalog copies are made."""
    import tempfile

    store = tmp_path / "a,b" / "store"
    assert_refused(cli("ingest", data_dir, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe",
                       "--transform", "tests.models:small"), "holds a comma", "rename the folder")
    assert not (tmp_path / "a,b").exists()
    assert_refused(cli("sql", "SELECT 1", "--store", tmp_path / "back\\slash"), "holds a backslash", "rename the folder")
    assert cli("ingest", data_dir, "--store", tmp_path / "store", "--model", "tests.models:tiny_net", "--layer",
               "probe", "--transform", "tests.models:small").exit_code == 0
    forget_prepared(monkeypatch)
    temporary = tmp_path / "temp,folder"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert_refused(cli("sql", "SELECT 1", "--store", tmp_path / "store"), f"temporary folder {temporary} holds a comma",
                   "set TMPDIR to another folder")


def test_a_write_after_an_edit_by_another_hand_lists_the_catalog_again(store, cli):
    """A process does not list the catalog state its own write left again, but any change since (here a macro added
    with DuckDB) is listed: the next write refuses it."""
    assert cli("screen", "--concepts", "--store", store).exit_code == 0
    assert cli("screen", "--concepts", "--store", store).exit_code == 0
    with duckdb.connect(str(store / "catalog.duckdb")) as conn:
        conn.execute("CREATE MACRO replace(a, b, c) AS 'planted'")
    before = snapshot(store)
    assert_refused(cli("screen", "--concepts", "--store", store), "macro 'replace'", "drop it with DuckDB")
    assert snapshot(store) == before


def test_a_view_standing_where_polysem_keeps_a_table_is_refused(store, tmp_path, cli):
    """A received catalog's store_meta may be a view (of any SQL, which could read any file): reading or writing
    the store would run it, so both refuse in one line naming it, the store unchanged."""
    received = shutil.copytree(store, tmp_path / "received")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        conn.execute("ALTER TABLE store_meta RENAME TO kept")
        conn.execute("CREATE VIEW store_meta AS SELECT * FROM kept")
    before = snapshot(received)
    for args in (("sql", "SELECT 1"), ("screen", "--concepts")):
        assert_refused(cli(*args, "--store", received), "a view 'store_meta' where polysem keeps a table",
                       "restore the catalog from a backup")
    assert snapshot(received) == before


def test_a_macro_of_the_other_kind_under_a_polysem_name_is_set_aside(store, tmp_path):
    """polysem's screen_sweep is a table macro: a scalar macro of that name is not polysem's and is set aside."""
    received = shutil.copytree(store, tmp_path / "received")
    with duckdb.connect(str(received / "catalog.duckdb")) as conn:
        conn.execute("CREATE MACRO screen_sweep(a, b, c) AS 5")
    with pytest.raises(Exception, match="screen_sweep"):
        Store(received).sql("SELECT screen_sweep(1, 2, 3) AS x")


def test_a_catalog_whose_tables_differ_in_a_constraint_is_refused_however_the_process_met_it(store, tmp_path, cli):
    """store_meta without its primary key (columns and types unchanged) cannot be prepared: the same refusal
    whether or not this process prepared a copy of the same files before."""
    Store(store).sql("SELECT 1")
    changed = shutil.copytree(store, tmp_path / "changed")
    with duckdb.connect(str(changed / "catalog.duckdb")) as conn:
        for statement in ("CREATE TABLE kept AS SELECT * FROM store_meta", "DROP TABLE store_meta",
                          "CREATE TABLE store_meta (key VARCHAR, value JSON NOT NULL)",
                          "INSERT INTO store_meta SELECT * FROM kept", "DROP TABLE kept"):
            conn.execute(statement)
    assert_refused(cli("sql", "SELECT count(*) FROM store_meta", "--store", changed), "catalog.duckdb",
                   "restore it from a backup")


@pytest.mark.parametrize("change", ["a view of its own", "a table of its own", "a column more"])
def test_a_catalog_holding_more_than_polysem_wrote_is_prepared_again(store, monkeypatch, change):
    """A catalog state holding an object polysem never defines, or a table of other columns, is prepared from
    scratch (what preparing keeps, it keeps): the prepared copy of the state before is not reused."""
    made = made_copies(monkeypatch)
    Store(store).sql("SELECT 1")
    statement = {"a view of its own": "CREATE VIEW mine AS SELECT 42 AS answer",
                 "a table of its own": "CREATE TABLE mine AS SELECT 42 AS answer",
                 "a column more": "ALTER TABLE class_similarity ADD COLUMN answer INTEGER DEFAULT 42"}[change]
    with duckdb.connect(str(store / "catalog.duckdb")) as conn:
        conn.execute(statement)
    reader = Store(store)
    query = "SELECT answer FROM mine" if "own" in change else "SELECT count(answer) AS answer FROM class_similarity"
    assert reader.sql(query).to_pylist() in ([{"answer": 42}], [{"answer": 0}])
    assert made == ["template", "prepared"]
# -- 5. damaged files: one line naming the file and the fix ------------------------------------

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_checksums(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(12288 + 100, len(data), 4096):  # one byte in every block after the headers
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def train_part(store: Path) -> Path:
    return next((store / "samples" / "train").rglob("*.parquet"))  # compacted after ingest: compact-*


def rewrite_column(path: Path, name: str, values=None) -> None:
    """Hand-edit a part: its column `name` replaced by `values` (None: the column dropped)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    index = table.schema.get_field_index(name)
    table = table.remove_column(index) if values is None else table.set_column(index, name, values(table))
    pq.write_table(table, path)


DAMAGE = {
    "part with a column of another type": (
        lambda s: rewrite_column(train_part(s), "positive_sum", lambda t: t.column("positive_sum").cast("string")),
        "samples/train/", "--split train",
        [["sql", "SELECT count(*) FROM samples"], ["info"], ["screen"], ["runs"]]),
    "part without its attributions": (lambda s: rewrite_column(train_part(s), "attribution"), "samples/train/",
                                      "--split train", []),  # the view still binds: `check` is what finds it
    "part with a negative positive_sum": (  # no attribution gives one; `check` sees it in the footer's statistics
        lambda s: rewrite_column(train_part(s), "positive_sum", lambda t: pa.compute.negate(t.column("positive_sum"))),
        "samples/train/", "--split train", []),
    "part with NaN for positive_sum": (
        lambda s: rewrite_column(train_part(s), "positive_sum", lambda t: pa.array([float("nan")] * len(t))),
        "samples/train/", "--split train", []),
    "truncated classes.parquet": (lambda s: truncate(s / "classes.parquet"), "classes.parquet", "backup",
                                  [["classes"], ["sql", "SELECT * FROM classes"], ["export", "classes", "--out", "{out}"],
                                   ["ingest", "{data}", "--split", "val"]]),
    "missing layer_weights.parquet": (lambda s: (s / "layer_weights.parquet").unlink(), "layer_weights.parquet", "backup",
                                      [["screen"], ["sql", "SELECT * FROM arv"], ["export", "arv", "--out", "{out}"]]),
    "catalog with bad checksums": (lambda s: break_checksums(s / "catalog.duckdb"), "catalog.duckdb", "backup",
                                   [["info"], ["sql", "SELECT 1"], ["runs"], ["screen"], ["classes"],
                                    ["ingest", "{data}", "--split", "val"], ["evaluate", "abc"]]),
    "catalog that is not a database": (lambda s: (s / "catalog.duckdb").write_bytes(b"garbage" * 100), "catalog.duckdb",
                                       "backup", [["info"], ["sql", "SELECT 1"]]),
    "missing schema file of ingest_errors": (
        lambda s: (s / "ingest_errors" / "_schema" / "empty.parquet").unlink(), "ingest_errors/",
        "to rewrite the store's schema files", [["sql", "SELECT count(*) FROM samples"], ["info"]]),
    "truncated part": (lambda s: truncate(train_part(s)), "samples/train/", "--split train",
                       [["sql", "SELECT count(*) FROM samples"], ["info"], ["screen"], ["classes"],
                        ["ingest", "{data}", "--split", "train"],
                        ["disentangle", "--channel", "0", "--concept1", "1", "--concept2", "2"]]),
}
CASES = [(name, command) for name, (_, _, _, commands) in DAMAGE.items() for command in commands]


@pytest.mark.parametrize("damage,command", CASES, ids=[f"{n}: {c[0]}" for n, c in CASES])
def test_damaged_files_get_one_line_naming_the_file_and_the_fix(cli, built, store, tmp_path, damage, command):
    breaks, file, fix, _ = DAMAGE[damage]
    breaks(store)
    args = [a.format(out=tmp_path / "out.csv", data=built[1]) for a in command]
    assert_refused(cli(*args, "--store", store), file, fix)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_check_names_every_damaged_file(cli, store, damage):
    breaks, file, _, _ = DAMAGE[damage]
    breaks(store)
    result = cli("check", "--store", store)
    assert result.exit_code == 2
    assert file in result.output and "Error:" in result.output


@pytest.mark.parametrize("table", ["samples", "ingest_errors"])
def test_repair_rewrites_a_schema_file_that_cannot_be_read(cli, store, table):
    """The fix a damaged schema file is named with (`check --repair`) rewrites it, and the store reads again."""
    schema_file = store / table / "_schema" / "empty.parquet"
    count = ("sql", "SELECT count(*) AS n FROM samples", "--store", store, "--format", "json")
    before = cli(*count).stdout
    truncate(schema_file)
    assert_refused(cli("sql", "SELECT count(*) FROM samples", "--store", store), str(schema_file), "check --repair")
    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0, repaired.output
    assert pyarrow.parquet.read_schema(schema_file).equals(layout.PART_TABLES[table], check_metadata=False)
    result = cli(*count)
    assert result.exit_code == 0 and json.loads(result.stdout) == json.loads(before) != [{"n": 0}], result.output


def test_check_passes_a_sound_store_and_repair_lets_a_split_be_ingested_again(cli, built, store):
    ok = cli("check", "--store", store)
    assert ok.exit_code == 0 and "ok: 6 Parquet files, 36 rows" in ok.output, ok.output
    part = train_part(store)
    truncate(part)
    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0, repaired.output
    assert f"set aside {part}" in repaired.output and not part.exists()
    again = cli("ingest", built[1], "--split", "train", "--store", store)
    assert again.exit_code == 0, again.output
    counts = Store(store).sql("SELECT split, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL").to_pylist()
    assert counts == [{"split": "train", "n": 18}, {"split": "val", "n": 12}]
    assert cli("check", "--store", store).exit_code == 0


def test_repair_sets_a_part_of_other_columns_aside_and_the_store_opens_again(cli, built, store):
    part = train_part(store)
    rewrite_column(part, "target", lambda t: t.column("target").cast("string"))
    assert_refused(cli("screen", "--store", store), str(part), "its column target is string", "--repair")
    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0 and f"set aside {part}" in repaired.output, repaired.output
    assert cli("ingest", built[1], "--split", "train", "--store", store).exit_code == 0
    assert cli("screen", "--store", store).exit_code == 0 and cli("check", "--store", store).exit_code == 0


def test_leftovers_of_a_kill_are_swept_on_the_next_write(store):
    """Only names polysem writes go: an atomic write's temporary file, a model without a run, a pending
    record without its model; a user's own files in the store, however old and however named, stay."""
    old = time.time() - 3600
    tmp = "0123456789abcdef0123456789abcdef.tmp"  # atomic_path's uuid4 hex
    leftovers = [store / "samples" / "train" / f".part-r000-abc.parquet.{tmp}",
                 store / "cache" / "features" / "train" / f".class-1.npz.{tmp}.npz",
                 store / "artifacts" / f".0123456789.pt.{tmp}",
                 store / "artifacts" / "0123456789.pt",
                 store / "artifacts" / "abcdef0123.pt.pending.json",
                 store / f".result.csv.{tmp}"]
    users = [store / "artifacts" / "model.pt", store / "artifacts" / "mine.pt.pending.json",
             store / ".result.csv.tmp", store / "samples" / "train" / ".notes.0123.tmp"]
    fresh = store / "samples" / "val" / f".part-r000-new.parquet.{tmp}"  # an ingest writing right now
    for path in [*leftovers, *users, fresh]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    for path in [*leftovers, *users]:
        os.utime(path, (old, old))
    parts = sorted(store.glob("samples/**/*.parquet"))
    with Store(store).connect(write=True):
        pass
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in users)
    assert fresh.exists() and sorted(store.glob("samples/**/*.parquet")) == parts


# -- 5. outputs that are folders, system files or the store itself ------------------------------

def test_bad_output_paths_are_refused_before_anything_is_written(cli, store, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    attempts = [
        (["sql", "SELECT 1", "--out", folder], "is a folder"),
        (["sql", "SELECT 1", "--out", "/proc/self/environ"], "system path"),
        (["sql", "SELECT 1", "--format", "csv", "--out", "/proc/x.csv"], "system path"),
        (["sql", "SELECT 1", "--out", store / "catalog.duckdb"], "inside the store"),
        (["export", "classes", "--out", folder], "is a folder"),
        (["export", "classes", "--out", "/sys/x.json"], "system path"),
        (["export", "classes", "--out", store / "catalog.duckdb"], "inside the store"),
        (["plot", "wordnet", "--out", store / "wordnet.png"], "inside the store"),
        (["plot", "wordnet", "--out", folder], "is a folder"),
        (["plot", "wordnet", "--out", "/proc/w.png"], "system path"),
        (["evaluate", "any", "--plots", store / "plots"], "inside the store"),
        (["evaluate", "any", "--plots", "/proc/plots"], "system path"),
        (["evaluate", "any", "--plots", store / "classes.parquet"], "inside the store"),
        (["evaluate", "any", "--plots", tmp_path / "a-file"], "is a file"),
    ]
    (tmp_path / "a-file").write_text("x")
    for args, message in attempts:
        assert_refused(cli(*args, "--store", store), message)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    assert list(folder.iterdir()) == []


def created(tmp_path: Path, data_dir: Path, name: str) -> Path:
    from polysem.ingest import ingest

    ingest(tmp_path / name, data_dir, "train", model="tests.models:tiny_net", layer="probe",
           transform="tests.models:small", progress=False)
    return tmp_path / name


def catalog_of(store: Path) -> dict:
    """Every table, view and macro of the store's catalog as DuckDB describes it (the columns it holds for each
    view included), store_meta but its time of creation, and the rows of every table and view."""
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as conn:
        objects = conn.execute(
            "SELECT 'view', view_name, sql FROM duckdb_views() WHERE NOT internal UNION ALL "
            "SELECT function_type, function_name, macro_definition FROM duckdb_functions() WHERE NOT internal "
            "AND function_type IN ('macro', 'table_macro') UNION ALL "
            "SELECT 'table', table_name, sql FROM duckdb_tables() UNION ALL "
            "SELECT 'column', table_name || '.' || column_name, data_type FROM duckdb_columns() ORDER BY ALL").fetchall()
        meta = conn.execute("SELECT * FROM store_meta WHERE key <> 'created_at' ORDER BY key").fetchall()
    rows = every_object(Store(store))
    del rows["store_meta"]
    return {"objects": objects, "meta": meta, "rows": rows}


def count_definitions(monkeypatch) -> list[str]:
    """The folders of the store catalogs (not readers' copies) whose tables, then views and macros get defined, from
    now on ('template': the process's template catalog, `catalog_template`)."""
    from polysem.query import meta as meta_module

    defined_in = []
    real = meta_module.apply_blocks

    def apply_blocks(conn, **kinds):
        path = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
        if Path(path).name == "catalog.duckdb":
            folder = Path(path).parent.name
            defined_in.append("template" if folder.startswith("polysem-template-") else folder)
        return real(conn, **kinds)

    monkeypatch.setattr(meta_module, "apply_blocks", apply_blocks)
    forget_prepared(monkeypatch)
    return defined_in


def test_a_new_stores_catalog_is_the_template_and_holds_what_defining_it_in_place_gives(data_dir, tmp_path,
                                                                                        monkeypatch):
    """No new store's catalog is defined in place: each starts as a copy of the process's template, and holds the
    same tables, views, columns, macros and rows as one defined in place."""
    defined_in = count_definitions(monkeypatch)
    first = catalog_of(created(tmp_path, data_dir, "first"))
    second = catalog_of(created(tmp_path, data_dir, "second"))
    assert defined_in == ["template", "template"], "one template, made once: no store's catalog defined"
    monkeypatch.setattr(store_module.layout, "only_creation_files", lambda folder: False)
    in_place = catalog_of(created(tmp_path, data_dir, "third"))
    assert defined_in == ["template", "template", "third", "third"]
    assert first == second == in_place


def test_a_store_created_where_other_parquet_files_lie_defines_its_catalog(data_dir, tmp_path, monkeypatch):
    """A part left in a folder without a catalog (a store whose catalog was deleted; here of a split of its own,
    with a column more) is bound by the views: such a store's catalog is defined in place, not copied from the
    template, and holds what defining it there gives; the template stays polysem's own."""
    defined_in = count_definitions(monkeypatch)
    leftover = tmp_path / "leftover"
    part = leftover / "samples" / "old" / "part-r000-000000000000.parquet"
    part.parent.mkdir(parents=True)
    pa.parquet.write_table(layout.SAMPLES.empty_table().append_column("extra", pa.array([], pa.int32())), part)
    def extra(catalog: dict) -> list:
        return [row for row in catalog["objects"] if row[0] == "column" and row[1].endswith(".extra")]

    assert extra(catalog_of(created(tmp_path, data_dir, "leftover")))  # samples and the views over it
    clean = catalog_of(created(tmp_path, data_dir, "clean"))
    assert not extra(clean)
    second = catalog_of(created(tmp_path, data_dir, "second"))
    (tmp_path / "more" / "samples" / "old").mkdir(parents=True)
    shutil.copy(part, tmp_path / "more" / "samples" / "old" / part.name)
    catalog_of(created(tmp_path, data_dir, "more"))
    assert defined_in == ["leftover"] * 2 + ["template"] * 2 + ["more"] * 2 and second == clean
