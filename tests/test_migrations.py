"""Every release opens every store an earlier release made: the format-2 store made by commit 14b7737
(tests/fixtures/format2) goes through every command on a copy. Reading leaves it byte-identical;
the first writing command migrates it; old rows stay as they were, new ones are recorded beside them."""

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from polysem.query import Store
from polysem.query.meta import SCHEMA_VERSION
from polysem.util.imports import TRUST_ENV
from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "format2"
RUN = "16497ad801"  # the fixture's one run
TABLES = ("runs", "rho_scores", "evaluations", "verifications", "visualizations", "channel_concepts",
          "class_similarity")
OLD_COLUMNS = {"visualizations": "run_id, channel, unit, method, steps, size, seed, image, act_original, act_c1, "
                                 "act_c2, act_r, selectivity, act_concepts",
               "runs": "run_id, group_id, created_at, channel, concepts, rho, objective, sources, shared, max_logit_diff, "
                       "artifact, polysem_version, parameters, warnings",
               "channel_concepts": "tau, p, gamma, split, correct_only, channel, concepts, names, sizes, min_cosine, "
                                   "computed_at"}


@pytest.fixture
def old_store(tmp_path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", store)
    return store


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(catalog: Path, table: str) -> list[tuple]:
    """A table's rows read straight from a catalog file (read-only), in a stable order."""
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        columns = OLD_COLUMNS.get(table, "*")
        return sorted(con.execute(f"SELECT {columns} FROM {table}").fetchall(), key=repr)
    finally:
        con.close()


def stored_format(catalog: Path) -> dict[str, str]:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return dict(con.execute("SELECT key, value ->> '$' FROM store_meta "
                                "WHERE key IN ('format', 'schema_version')").fetchall())
    finally:
        con.close()


def test_the_fixture_is_format_2():
    assert stored_format(FIXTURE / "store" / "catalog.duckdb") == {"format": "2"}


READS = [
    ("info",), ("classes",), ("runs",), ("runs", RUN), ("screen",), ("sql", "SELECT count(*) FROM samples"),
    ("sql", "SELECT * FROM visualizations"), ("check",),
]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a) for a in READS])
def test_reading_commands_work_and_write_nothing(cli, old_store, args):
    before = digest(old_store)
    result = cli(*args, "--store", old_store)
    assert result.exit_code == 0, result.output
    assert digest(old_store) == before


def test_reads_see_the_old_rows(cli, old_store):
    info = json.loads(cli("info", "--store", old_store, "--format", "json").output)
    assert info["splits"]["train"]["images"] == 18 and info["splits"]["val"]["images"] == 12 and info["runs"] == 1
    shown = json.loads(cli("sql", "SELECT run_id, resolved FROM verifications", "--store", old_store,
                           "--format", "json").output)
    assert shown == [{"run_id": RUN, "resolved": True}]


def test_every_command_on_an_old_store(cli, old_store, tmp_path, monkeypatch):
    # The fixture's code folder (/work/wt-fixture) is another machine's, as in a store sent by a colleague:
    # the model code is trusted by name, from this checkout.
    monkeypatch.setenv(TRUST_ENV, str(ROOT))
    data = FIXTURE / "data"
    catalog = old_store / "catalog.duckdb"
    old = {table: rows(catalog, table) for table in TABLES}
    assert all(old[t] for t in ("runs", "evaluations", "verifications", "visualizations", "channel_concepts"))

    def ok(*args):
        result = cli(*args, "--store", old_store)
        assert result.exit_code == 0, (args, result.output)
        return result.stdout  # progress bars go to stderr

    ok("screen", "--concepts")  # the first command that records migrates the catalog
    assert stored_format(catalog) == {"schema_version": str(SCHEMA_VERSION)}
    ok("compact")  # moves the old files into the first layer's folder, the catalog migrated
    assert stored_format(catalog) == {"schema_version": str(SCHEMA_VERSION)}
    shutil.copytree(data / "val", tmp_path / "more" / "holdout")  # a new split goes in beside the old ones
    assert "12 images stored, 0 already there" in ok("ingest", tmp_path / "more", "--split", "holdout")
    assert "n_holdout" in ok("classes")
    ok("wordnet", "--wordnet-dir", "/usr/share/wordnet")
    ok("plot", "wordnet", "--out", tmp_path / "wordnet.png")
    new_run = json.loads(ok("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red",
                            "--data", data, "--format", "json"))["run_id"]
    for run in (RUN, new_run):
        ok("verify", run, "--data", data)
        ok("visualize", run, "--size", 16, "--steps", 4, "--data", data)
    ok("evaluate", RUN, "--plots", tmp_path / "plots", "--data", data)  # the old run's rows, drawn
    ok("evaluate", new_run, "--data", data)  # the report below draws the new run
    ok("export", "runs", "--out", tmp_path / "runs.parquet")
    ok("report", "--out", tmp_path / "report", "--data", data)
    ok("check")

    # the runs and rho scores of the old run are untouched; a new run sits beside them
    new = {table: rows(catalog, table) for table in TABLES}
    assert all(row in new["runs"] for row in old["runs"]) and len(new["runs"]) == 2
    assert all(row in new["rho_scores"] for row in old["rho_scores"]) and len(new["rho_scores"]) > len(old["rho_scores"])
    # evaluate, verify and visualize replace a run's own rows: the old run's numbers come back the same
    old_eval = {(r[0], r[1]): r[2:7] for r in old["evaluations"]}
    new_eval = {(r[0], r[1]): r[2:7] for r in new["evaluations"]}
    assert {k: new_eval[k] for k in old_eval} == old_eval and any(k[0] == new_run for k in new_eval)
    old_verify = [r[:10] for r in old["verifications"]]
    assert old_verify == [r[:10] for r in new["verifications"] if r[0] == RUN]
    assert {r[0] for r in new["visualizations"]} == {RUN, new_run}
    # the screening at the same settings finds the same concepts (only computed_at differs)
    assert [r[:10] for r in old["channel_concepts"]] == [r[:10] for r in new["channel_concepts"]]
    assert Store(old_store).meta()["schema_version"] == SCHEMA_VERSION


def test_a_store_of_a_newer_format_is_refused_in_one_line(cli, old_store):
    con = duckdb.connect(str(old_store / "catalog.duckdb"))
    con.execute("INSERT OR REPLACE INTO store_meta VALUES ('format', '99')")
    con.close()
    before = digest(old_store)
    for args in (("info",), ("compact",)):
        result = cli(*args, "--store", old_store)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "format 99" in lines[0] and f"up to {SCHEMA_VERSION}" in lines[0] and "upgrade polysem" in lines[0]
    assert digest(old_store) == before


@pytest.mark.parametrize("value", ["'6.5'", "'\"abc\"'", "'-1'", "'1'", "'true'"])
def test_a_format_no_polysem_writes_is_refused_in_one_line(cli, old_store, value):
    """Formats are whole numbers from 2 up: anything else in a received catalog is refused, not migrated."""
    con = duckdb.connect(str(old_store / "catalog.duckdb"))
    con.execute(f"INSERT OR REPLACE INTO store_meta VALUES ('format', {value})")
    con.close()
    before = digest(old_store)
    for args in (("info",), ("screen",), ("compact",)):
        result = cli(*args, "--store", old_store)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "which no polysem writes" in lines[0] and "restore the catalog from a backup" in lines[0], lines[0]
    assert digest(old_store) == before


def test_a_format_2_store_without_act_concepts_gains_it(old_store):
    """Format-2 stores made before k > 2 runs have no visualizations.act_concepts: migrate_3 adds it."""
    con = duckdb.connect(str(old_store / "catalog.duckdb"))
    con.execute("ALTER TABLE visualizations DROP COLUMN act_concepts")
    con.close()
    store = Store(old_store)
    assert store.sql("SELECT count(*) AS n FROM visualizations").column("n")[0].as_py() == 4  # a reader copes
    with store.transaction() as tx:  # the first writer migrates
        assert tx.visualization_images(run_id=RUN, channel=0, method="maco", steps=8, size=16, seed=0).num_rows
    con = duckdb.connect(str(old_store / "catalog.duckdb"), read_only=True)
    columns = [row[0] for row in con.execute("DESCRIBE visualizations").fetchall()]
    con.close()
    assert "act_concepts" in columns


def test_migrate_5_lets_a_failed_visualisation_be_recorded(old_store):
    """Format 4: `visualizations.failure`, and `image` may be NULL (a unit that never activated has no picture)."""
    store = Store(old_store)
    with store.transaction() as tx:  # the first writer migrates
        assert tx.visualization_images(run_id=RUN, channel=0, method="maco", steps=8, size=16, seed=0).num_rows
    con = duckdb.connect(str(old_store / "catalog.duckdb"), read_only=True)
    columns = {r[0]: r[2] for r in con.execute("DESCRIBE visualizations").fetchall()}
    con.close()
    assert columns["failure"] == "YES" and columns["image"] == "YES"  # both nullable
