"""A first ingest that fails at any point leaves no store, or one the next ingest completes: a catalog with no tables at all, or with some tables but no `store_meta`, is answered by every
reading command with one line saying the store was never completely created and to run ingest; `check`
reports it (and `check --repair` leaves it to ingest, byte-identical); the next `polysem ingest` completes it."""

import shutil
from pathlib import Path

import duckdb
import pytest

from polysem.errors import StoreError
from polysem.ingest import ingest
from polysem.query import Store
from tests.helpers import TINY, assert_refused, snapshot

READS = [("info",), ("classes",), ("runs",), ("screen",), ("screen", "--concepts"), ("sql", "SELECT 1"),
         ("export", "runs", "--out", "OUT.parquet"), ("verify", "RUN"), ("disentangle", "--channel", 0, "--concept1", 0,
         "--concept2", 1), ("report", "--out", "OUT"), ("wordnet",), ("plot", "wordnet", "--out", "OUT.png")]
NEVER = ("never completely created", "run `polysem ingest` again to complete it")


def empty_catalog(store: Path) -> None:
    """A DuckDB file with no tables at all (the first ingest opened the catalog and stopped)."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "catalog.duckdb").unlink(missing_ok=True)
    duckdb.connect(str(store / "catalog.duckdb")).close()


def half_made(kind: str, built) -> Path:
    store = built.store
    if kind == "empty catalog only":
        shutil.rmtree(store)
        empty_catalog(store)
    elif kind == "empty catalog and parquet tables":  # killed between its Parquet tables and its catalog
        for folder in ("samples", "ingest_errors"):
            shutil.rmtree(store / folder)
        empty_catalog(store)
    elif kind == "some tables, no store_meta":
        con = duckdb.connect(str(store / "catalog.duckdb"))
        for view in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall():
            con.execute(f'DROP VIEW "{view[0]}"')
        con.execute("DROP TABLE store_meta")
        con.execute("DROP TABLE runs")
        con.close()
    return store


KINDS = ["empty catalog only", "empty catalog and parquet tables", "some tables, no store_meta"]


@pytest.mark.parametrize("kind", KINDS)
def test_reading_commands_say_so_in_one_line(cli, fixture_store, tmp_path, kind):
    store = half_made(kind, fixture_store("tiny"))
    before = snapshot(store)
    for args in READS:
        args = [str(tmp_path / "out") if a == "OUT" else str(tmp_path / a.lower()) if str(a).startswith("OUT.") else a
                for a in args]
        assert_refused(cli(*args, "--store", store), *NEVER)
    with pytest.raises(StoreError, match="never completely created"):
        Store(store).sql("SELECT 1")
    assert snapshot(store) == before
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_check_reports_it_and_repair_leaves_it_to_ingest(cli, fixture_store, kind):
    built = fixture_store("tiny")
    store = half_made(kind, built)
    before = snapshot(store)
    for repair in ((), ("--repair",)):
        result = cli("check", *repair, "--store", store)
        assert result.exit_code == 2, result.output
        problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
        assert len(problems) == 1 and all(text in problems[0] for text in NEVER), result.output
        assert "Table with name" not in result.output
    assert snapshot(store) == before
    for split in ("train", "val"):  # the fixture's val rows too: their folder is recorded by their split's ingest
        done = cli("ingest", built.images, "--split", split, "--store", store, *TINY)
        assert done.exit_code == 0, done.output
    checked = cli("check", "--repair", "--store", store)
    assert checked.exit_code == 0 and "ok:" in checked.output, checked.output


@pytest.mark.parametrize("kind", KINDS)
def test_the_next_ingest_completes_it(cli, fixture_store, kind):
    built = fixture_store("tiny")
    store = half_made(kind, built)
    for split in ("train", "val"):
        result = cli("ingest", built.images, "--split", split, "--store", store, *TINY)
        assert result.exit_code == 0, result.output
    info = Store(store).info()
    assert info["splits"]["train"]["images"] == 15 and info["splits"]["val"]["images"] == 9
    assert info["model"] == "tests.models:tiny_net" and info["runs"] == 0
    assert cli("screen", "--store", store).exit_code == 0
    assert cli("check", "--store", store).exit_code == 0


def _fail(*_args, **_kwargs):
    raise RuntimeError("stopped here")


POINTS = {  # where a first ingest stops: the function that raises instead
    "writing the schema files": "polysem.query.layout.write_schema_files",
    "writing classes.parquet": "polysem.util.atomic.write_atomic",
    "opening the catalog": "polysem.query.store.open_for_writing",
    "setting up the catalog": "polysem.query.store.prepare_catalog",
    "writing the metadata": "polysem.ingest.store_setup.write_meta",
    "writing the parts": "polysem.ingest.writer.PartWriter.add_samples",
}


@pytest.mark.parametrize("point", list(POINTS))
def test_a_first_ingest_stopped_anywhere_is_completed_by_the_next(cli, fixture_store, tmp_path, monkeypatch, point):
    images = fixture_store("tiny").images
    store = tmp_path / "store"
    with monkeypatch.context() as patched:
        patched.setattr(POINTS[point], _fail)
        with pytest.raises(RuntimeError, match="stopped here"):
            ingest(store, images, "train", model="tests.models:tiny_net", layer="probe",
                   transform="tests.models:small", progress=False, num_workers=0)
    if (store / "catalog.duckdb").exists() and point != "writing the parts":
        assert_refused(cli("info", "--store", store), *NEVER)
    elif point != "writing the parts":
        assert_refused(cli("info", "--store", store), "no polysem store")
    result = cli("ingest", images, "--split", "train", "--store", store, *TINY)
    assert result.exit_code == 0, result.output
    assert Store(store).info()["splits"]["train"]["images"] == 15
    assert cli("check", "--store", store).exit_code == 0
