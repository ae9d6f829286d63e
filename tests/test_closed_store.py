"""A received store is a closed world: whatever it holds, polysem deletes, truncates, renames or writes
nothing outside it, and nothing in it can hang a command.

Each case is a store someone could send: one of its entries (a staging folder, a lock file, the models
folder, the cache, a split, the catalog) is a link to a file or folder of the user's own, or a FIFO where
polysem expects a file. Every command is refused in one `Error:` line naming the entry and the fix, exit 2,
before anything is written: the user's files and the store stay byte-identical."""

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polysem.errors import StoreError
from polysem.query import Store
from polysem.query.compact import compact, lock_split
from polysem.query.screening import sweep
from tests import zygote
from tests.helpers import assert_refused, snapshot

OLD = time.time() - 3600  # older than the sweep's minute: a file the sweep would take if it were the store's


def users_folder(tmp_path: Path) -> Path:
    """A folder of the user's, next to the received store: an old model file and a sibling store's split."""
    mine = tmp_path / "mine"
    (mine / "samples" / "val").mkdir(parents=True)
    (mine / "model.pt").write_bytes(b"the user's own model")
    (mine / "samples" / "val" / "part-r000-0123456789ab.parquet").write_bytes(b"the user's own part")
    (mine / "catalog.duckdb").write_bytes(b"the user's own catalog")
    for path in mine.rglob("*"):
        os.utime(path, (OLD, OLD))
    return mine


def plant(store: Path, entry: str, target: Path) -> None:
    """Replace `entry` of the store by a link to `target` (the received store's trick)."""
    path = store / entry
    if path.is_dir():
        os.rename(path, path.with_name(path.name + ".real"))  # kept aside, inside the store's folder
    elif path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


LINKS = {  # entry -> (what it points to in the user's folder, the commands that each once reached it)
    ".compact": (".", [["compact"], ["ingest", "{images}", "--split", "val"]]),
    ".create.lock": ("model.pt", [["ingest", "{images}", "--split", "val"]]),
    "samples/.val.lock": ("model.pt", [["compact"], ["ingest", "{images}", "--split", "val"]]),
    "samples/.train.lock": ("model.pt", [["compact", "--split", "train"]]),
    "artifacts": (".", [["screen", "--concepts"], ["check", "--repair"]]),
    "cache": (".", [["screen"], ["info"]]),
    "samples/train": ("samples/val", [["check", "--repair"], ["sql", "SELECT count(*) FROM samples"]]),
    "catalog.duckdb": ("catalog.duckdb", [["check", "--repair"], ["runs"]]),
}


@pytest.mark.parametrize("entry", list(LINKS))
def test_a_link_in_a_received_store_is_refused_and_reaches_nothing(cli, fixture_store, tmp_path, entry):
    built = fixture_store("tiny")
    store, mine = built.store, users_folder(tmp_path)
    target, commands = LINKS[entry]
    plant(store, entry, mine / target)
    before_store, before_mine = snapshot(store), snapshot(mine)
    for command in commands:
        args = [str(a).format(images=built.images) for a in command]
        result = cli(*args, "--store", store)
        assert_refused(result, f"{entry} in the store", "is a symbolic link", "remove it")
        assert snapshot(mine) == before_mine, args
        assert snapshot(store) == before_store, args
    assert (mine / "model.pt").read_bytes() == b"the user's own model"


def test_the_api_refuses_a_linked_store_too(fixture_store, tmp_path):
    built = fixture_store("tiny")
    mine = users_folder(tmp_path)
    plant(built.store, ".compact", mine)
    with pytest.raises(Exception, match=r"\.compact in the store .* is a symbolic link"):
        compact(built.store)
    assert (mine / "samples" / "val").is_dir()


def test_the_sweep_takes_only_what_polysem_writes(fixture_store):
    """A user's file lying in the store's models folder, old and in no run, stays."""
    store = fixture_store("tiny").store
    (store / "artifacts").mkdir(exist_ok=True)
    own = store / "artifacts" / "model.pt"
    own.write_bytes(b"mine")
    os.utime(own, (OLD, OLD))
    with Store(store).connect(write=True):
        pass
    assert own.read_bytes() == b"mine"


# Each FIFO case runs in a child process with a time limit: a regression would hang, not fail.
FIFO_DRIVER = """
import json, sys
from typer.testing import CliRunner
from polysem.cli import app
out = {}
for name, args in json.loads(sys.argv[1]).items():
    result = CliRunner().invoke(app, args)
    out[name] = [result.exit_code, result.output]
print(json.dumps(out))
"""


def run_cases(cases: dict[str, list[str]]) -> dict[str, list]:
    done = zygote.run(json.dumps(cases), code=FIFO_DRIVER, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_special_files_in_a_store_never_hang_a_command(fixture_store, tmp_path):
    """A FIFO as the catalog's write-ahead log, as a part and as the catalog: every command answers in one
    line naming the entry, without opening it (an open would wait for a writer forever)."""
    built = {name: fixture_store("tiny") for name in ("wal", "part", "catalog")}
    wal, part, catalog = (b.store for b in built.values())
    os.mkfifo(wal / "catalog.duckdb.wal")
    os.mkfifo(part / "samples" / "train" / "part-r000-fifo00000000.parquet")
    (catalog / "catalog.duckdb").unlink()
    os.mkfifo(catalog / "catalog.duckdb")
    images = str(built["wal"].images)
    cases = {
        "wal info": ["info", "--store", str(wal)],
        "wal screen": ["screen", "--store", str(wal)],
        "part check": ["check", "--store", str(part)],
        "part repair": ["check", "--repair", "--store", str(part)],
        "part compact": ["compact", "--store", str(part)],
        "catalog info": ["info", "--store", str(catalog)],
        "catalog ingest": ["ingest", images, "--split", "val", "--store", str(catalog)],
    }
    before = {name: snapshot(b.store) for name, b in built.items()}
    answers = run_cases(cases)
    entry = {"wal": "catalog.duckdb.wal", "part": "samples/train/part-r000-fifo00000000.parquet",
             "catalog": "catalog.duckdb"}
    for name, (code, output) in answers.items():
        lines = [ln for ln in output.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (name, output)
        assert lines[0].startswith("Error: ") and f"{entry[name.split()[0]]} in the store" in lines[0], lines[0]
        assert "is a FIFO (named pipe)" in lines[0], lines[0]
    assert {name: snapshot(b.store) for name, b in built.items()} == before


# -- counted once ---------------------------------------------------------------------------------

def test_a_copied_part_is_named_by_check_and_refused_by_screening(cli, fixture_store):
    store = fixture_store("tiny").store
    honest = sweep(Store(store)).to_pylist()
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    copy = part.with_name("part-r000-copy00000000.parquet")
    copy.write_bytes(part.read_bytes())
    n = pq.read_metadata(part).num_rows

    checked = cli("check", "--store", store)
    assert checked.exit_code != 0
    assert f"{copy.relative_to(store)} repeats {n} images that {part.name} holds too" in checked.output
    before = snapshot(store)
    for command in (["screen"], ["screen", "--sweep"], ["wordnet"]):
        assert_refused(cli(*command, "--store", store), "split 'train' holds image", "2 times",
                       "polysem check --repair")
    assert snapshot(store) == before

    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0, repaired.output
    assert not copy.exists() and copy.with_name(copy.name + ".damaged").exists()
    assert sweep(Store(store)).to_pylist() == honest  # every count as before the copy


def test_a_part_without_its_attributions_is_named_not_read_as_irrelevant(cli, fixture_store):
    store = fixture_store("tiny").store
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    pq.write_table(pq.read_table(part).drop_columns(["attribution"]), part)
    before = snapshot(store)
    assert_refused(cli("screen", "--store", store), part.name, "it has no column attribution",
                   "polysem check --repair")
    assert snapshot(store) == before
    checked = cli("check", "--store", store)
    assert checked.exit_code != 0 and "it has no column attribution" in checked.output


@pytest.mark.parametrize("edit, problem", [
    ("double", "its column target is double, not int32"),
    ("dropped", "it has no column target"),
    ("renamed", "it has no column target"),
])
def test_a_part_whose_target_was_edited_is_named_by_every_read_and_set_aside_by_repair(cli, fixture_store, edit,
                                                                                        problem):
    """The samples view reads its parts by column name: an edited target would read as NULL (dropped, renamed) or
    as a float beside the other parts' integers, and every count by class would be wrong without a word."""
    import pyarrow as pa

    store = fixture_store("tiny").store
    total = Store(store).sql("SELECT count(*) AS n FROM samples WHERE split = 'train'").column("n")[0].as_py()
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    n_part = pq.read_metadata(part).num_rows
    table = pq.read_table(part)
    column = table.schema.get_field_index("target")
    table = {"double": lambda t: t.set_column(column, "target", t["target"].cast(pa.float64())),
             "dropped": lambda t: t.remove_column(column),
             "renamed": lambda t: t.rename_columns(["label" if c == "target" else c for c in t.column_names]),
             }[edit](table)
    pq.write_table(table, part)
    before = snapshot(store)
    for command in (["sql", "SELECT target, count(*) FROM samples GROUP BY target"], ["classes"], ["info"],
                    ["export", "samples", "--out", "-", "--format", "csv"], ["screen"]):
        assert_refused(cli(*command, "--store", store), str(part), problem, "polysem check --repair")
    with pytest.raises(StoreError, match="polysem check --repair"):
        Store(store).sql("SELECT sum(target) FROM samples")
    assert snapshot(store) == before

    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0, repaired.output
    assert "ingest split 'train' again" in repaired.output, repaired.output
    assert not part.exists() and part.with_name(part.name + ".damaged").exists()
    left = Store(store).sql("SELECT count(*) AS n, count(target) AS known FROM samples WHERE split = 'train'")
    assert left.to_pylist() == [{"n": total - n_part, "known": total - n_part}]


def test_every_file_the_views_read_is_checked_below_a_layers_folder_too(cli, fixture_store):
    """The samples view reads samples/**/*.parquet: a part one folder deeper than polysem writes is read as well,
    so its columns are checked too."""
    import re

    from polysem.query import layout
    from tests.conftest import ROOT

    views = (ROOT / "sql" / "store_views.sql").read_text()
    read = set(re.findall(r"'((?:samples|ingest_errors)/[^']*\.parquet)'", views))
    assert read == {"samples/**/*.parquet", "ingest_errors/*/*.parquet"}  # the globs layout.part_files lists
    store = fixture_store("tiny").store
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    deeper = part.parent / "deeper" / "part.parquet"
    deeper.parent.mkdir()
    pq.write_table(pq.read_table(part).drop_columns(["target"]), deeper)
    assert ("samples", deeper) in set(layout.part_files(store))
    before = snapshot(store)
    assert_refused(cli("classes", "--store", store), str(deeper), "it has no column target", "polysem check --repair")
    assert snapshot(store) == before
    stray = store / "samples" / "stray.parquet"  # beside the splits' folders, where polysem writes no part
    pq.write_table(pq.read_table(part).drop_columns(["target"]), stray)
    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0, repaired.output
    assert "ingest split 'train' again" in repaired.output and "polysem never writes a part there" in repaired.output
    assert not deeper.exists() and not stray.exists()
    assert cli("classes", "--store", store).exit_code == 0


def test_a_split_named_like_a_parquet_file_is_a_folder_not_a_part(cli, data_dir, store_path):
    """The views' glob samples/**/*.parquet matches the folder of a split named v.parquet too; DuckDB reads only
    the files in it, and so does the parts' check: the split is read, never refused or set aside."""
    import shutil

    from tests.conftest import TINY

    shutil.copytree(data_dir / "val", data_dir / "v.parquet")
    for split in ("train", "v.parquet"):
        result = cli("ingest", data_dir, "--split", split, "--store", store_path, *TINY)
        assert result.exit_code == 0, result.output
    counts = Store(store_path).sql("SELECT split, count(*) AS n FROM samples GROUP BY split ORDER BY split")
    assert counts.to_pylist() == [{"split": "train", "n": 10}, {"split": "v.parquet", "n": 6}]
    checked = cli("check", "--repair", "--store", store_path)
    assert checked.exit_code == 0 and "set aside" not in checked.output, checked.output
    assert (store_path / "samples" / "v.parquet").is_dir()


def test_a_file_polysem_never_writes_beside_a_schema_file_is_set_aside_by_repair(cli, fixture_store):
    store = fixture_store("tiny").store
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    extra = store / "samples" / "_schema" / "extra.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["target"]), extra)
    before = snapshot(store)
    assert_refused(cli("classes", "--store", store), str(extra), "it has no column target",
                   "polysem check --repair", "polysem never writes a part there")
    assert snapshot(store) == before
    repaired = cli("check", "--repair", "--store", store)
    assert repaired.exit_code == 0 and "polysem never writes a part there" in repaired.output, repaired.output
    assert not extra.exists() and (store / "samples" / "_schema" / "empty.parquet").exists()
    assert cli("classes", "--store", store).exit_code == 0


def test_a_part_with_a_column_twice_or_a_footer_pyarrow_cannot_read_is_named_and_set_aside(cli, fixture_store,
                                                                                          monkeypatch):
    import pyarrow as pa

    store = fixture_store("tiny").store
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(table.append_column(pa.field("target", pa.int32()), table["target"]), part)
    before = snapshot(store)
    assert_refused(cli("sql", "SELECT count(*) FROM samples", "--store", store), str(part),
                   "it has the column target twice", "polysem check --repair")
    with pytest.raises(StoreError, match="the column target twice"):
        Store(store).sql("SELECT 1")
    assert snapshot(store) == before

    from polysem.query import layout

    def unreadable(table, path, **_):  # a forged footer: pyarrow's ArrowNotImplementedError, not a ValueError
        raise pa.ArrowNotImplementedError("Integers with more than 64 bits not implemented")

    monkeypatch.setattr(layout, "schema_problem", unreadable)
    assert_refused(cli("info", "--store", store), str(part), "Integers with more than 64 bits", "polysem check --repair")
    checked = cli("check", "--store", store)
    assert checked.exit_code == 2 and "Integers with more than 64 bits" in checked.output, checked.output
    assert snapshot(store) == before
    monkeypatch.undo()
    assert cli("check", "--repair", "--store", store).exit_code == 0
    assert cli("sql", "SELECT count(*) FROM samples", "--store", store).exit_code == 0


def test_a_part_removed_while_its_footer_is_read_is_no_damage(fixture_store, monkeypatch):
    """A compaction in another process swaps the split's files between the listing and the footer's read: the
    vanished part is not named damaged (the next state's parts are checked when it is read)."""
    from polysem.query import layout

    store = fixture_store("tiny").store
    real = layout.schema_problem
    removed = []

    def compacted_meanwhile(table, path, **kwargs):
        if table == "samples" and path.parent.name != layout.SCHEMA_DIR and not removed:
            removed.append(path)
            path.rename(path.with_name("compact-swapped-in.parquet"))  # the same rows, under another name
        return real(table, path, **kwargs)

    monkeypatch.setattr(layout, "schema_problem", compacted_meanwhile)
    assert Store(store).sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py() > 0 and removed


def test_an_edit_that_keeps_a_parts_size_and_time_is_checked_by_the_next_store_object(fixture_store):
    """Store objects of one process share the database of a state of the store's files; a part rewritten with its
    size and modification time kept (os.utime) is still a new state, and its columns are checked."""
    store = fixture_store("tiny").store
    assert Store(store).sql("SELECT count(target) AS n FROM samples").column("n")[0].as_py() > 0
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    info = part.stat()
    data = part.read_bytes()
    assert data.count(b"target") >= 1
    part.write_bytes(data.replace(b"target", b"targez"))  # same size: the column renamed in the footer
    os.utime(part, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert part.stat().st_size == info.st_size and part.stat().st_mtime_ns == info.st_mtime_ns
    with pytest.raises(StoreError, match="it has no column target"):
        Store(store).sql("SELECT count(target) AS n FROM samples")


def test_a_file_name_that_is_not_utf8_is_refused_in_one_line(cli, fixture_store):
    """DuckDB fails to list a folder holding such a name (a tarball from another locale), whatever the file is: every
    command names it and the fix, and the store stays as it is."""
    store = fixture_store("tiny").store
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    odd = os.path.join(os.fsencode(part.parent), b"part-\xff\xfe.parquet")
    with open(odd, "wb") as handle:
        handle.write(part.read_bytes())
    before = snapshot(store)
    for command in (["sql", "SELECT count(*) FROM samples"], ["info"], ["check", "--repair"]):
        assert_refused(cli(*command, "--store", store), "has a name that is not UTF-8", "rename it with `mv`")
    assert snapshot(store) == before
    os.remove(odd)
    assert cli("sql", "SELECT count(*) FROM samples", "--store", store).exit_code == 0


def test_a_format_of_null_is_refused(cli, fixture_store):
    """JSON null names no format: refused in one line, never taken as the current one."""
    import duckdb

    store = fixture_store("tiny").store
    con = duckdb.connect(str(store / "catalog.duckdb"))
    con.execute("UPDATE store_meta SET value = 'null' WHERE key = 'schema_version'")
    con.close()
    before = snapshot(store)
    for command in (["info"], ["screen"], ["check", "--repair"]):
        result = cli(*command, "--store", store)
        assert result.exit_code == 2 and "Error: " in result.output, result.output
        assert "no polysem writes" in result.output or "not JSON" in result.output, result.output
        assert "Binder Error" not in result.output
    assert snapshot(store) == before


def test_check_during_a_compaction_calls_nothing_damaged(fixture_store, monkeypatch):
    """A compaction that swaps the split's files while check reads them: the vanished file is not damage,
    and the split is read again."""
    import polysem.query.integrity as check_module

    store = fixture_store("tiny-train-8").store
    (compacted,) = (store / "samples" / "train").rglob("*.parquet")
    table = pq.read_table(compacted)
    for i, start in enumerate((0, 12)):  # two ingest parts again, which a compaction rewrites
        pq.write_table(table.slice(start, 12), compacted.with_name(f"part-r000-{i:012d}.parquet"))
    compacted.unlink()
    real = check_module._footer_rows
    swapped = []

    def footer_rows(path, *args, **kwargs):
        if not swapped and path.parent.parent.name == "train":
            swapped.append(compact(store, "train"))  # the concurrent compaction, between listing and reading
        return real(path, *args, **kwargs)

    monkeypatch.setattr(check_module, "_footer_rows", footer_rows)
    report = Store(store).check()
    assert swapped[0][0].rows_rewritten > 0
    assert report.ok, report.problems
    images = Store(store).sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    assert report.rows >= images == 24  # the compacted files, read again, hold every image once


def test_check_repair_waits_for_no_compaction_it_would_race(cli, fixture_store):
    store = fixture_store("tiny").store
    held = lock_split(store, "train")  # an ingest or compaction of train is running
    try:
        before = snapshot(store)
        assert_refused(cli("check", "--repair", "--store", store), "another ingest of split 'train'")
        assert snapshot(store) == before
    finally:
        held.close()
    assert cli("check", "--repair", "--store", store).exit_code == 0


@pytest.mark.parametrize("entry", ["catalog.duckdb", "catalog.duckdb.wal"])
def test_a_hard_linked_catalog_is_refused(cli, fixture_store, tmp_path, entry):
    """DuckDB writes the catalog and its log in place: a second name of either (a user's file) would change."""
    built = fixture_store("tiny")
    store, mine = built.store, users_folder(tmp_path)
    (store / entry).unlink(missing_ok=True)
    os.link(mine / "catalog.duckdb", store / entry)
    before = (mine / "catalog.duckdb").read_bytes()
    for command in (["info"], ["check", "--repair"], ["compact"]):
        assert_refused(cli(*command, "--store", store), f"{entry} in the store", "has 2 names (hard links)")
    assert (mine / "catalog.duckdb").read_bytes() == before


def test_a_forged_pending_record_is_named_and_set_aside(cli, fixture_store):
    """A pending record polysem cannot have written stops no command with a raw message: each write names it,
    before any work; `check` names it and `check --repair` sets it aside."""
    store = fixture_store("opponent-colour-run").store
    forged = [("{not json", "it is not JSON"),
              ('{"runs": [{"run_id": "x", "artifact": "/etc/passwd"}]}', "names a model file other than")]
    for text, why in forged:
        pending = store / "artifacts" / "0123456789.pt.pending.json"
        pending.write_text(text)
        (store / "artifacts" / "0123456789.pt").write_bytes(b"x")
        before = snapshot(store)
        refused = cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", store)
        assert_refused(refused, str(pending), why, "check --repair")
        assert snapshot(store) == before  # refused before any work: no model, cache or record left behind
        checked = cli("check", "--store", store)
        assert checked.exit_code != 0 and why in checked.output
        repaired = cli("check", "--repair", "--store", store)
        assert repaired.exit_code == 0, repaired.output
        assert not pending.exists() and pending.with_name(pending.name + ".damaged").exists()
        pending.with_name(pending.name + ".damaged").unlink()
        (store / "artifacts" / "0123456789.pt").unlink(missing_ok=True)


def test_a_run_row_naming_another_file_never_costs_the_real_model(cli, fixture_store):
    import duckdb

    built = fixture_store("opponent-colour-run")
    store, run_id = built.store, built.info["run_id"]
    (model,) = (store / "artifacts").glob("*.pt")
    os.utime(model, (OLD, OLD))
    con = duckdb.connect(str(store / "catalog.duckdb"))
    con.execute("UPDATE runs SET artifact = '/etc/passwd' WHERE run_id = ?", [run_id])
    con.close()
    checked = cli("check", "--repair", "--store", store)
    assert checked.exit_code != 0 and "names the model file '/etc/passwd'" in checked.output, checked.output
    assert model.is_file()  # the sweep removes no model while a row names a file it cannot have written


@pytest.mark.parametrize("outside", ["{tmp}/secret.png", "{root}/green/../../../secret.png", "green/000.png"],
                         ids=["another folder", "a .. part", "relative"])
def test_a_part_naming_an_image_outside_its_splits_folder_is_named_by_check_and_never_opened(
        cli, fixture_store, tmp_path, outside):
    """A store names the images it was made from; one sent to you could name any file, which the figures would then
    read and draw into a report. Only files below the split's recorded folder are read."""
    import pyarrow as pa

    built = fixture_store("opponent-colour-run")
    store, run_id = built.store, built.info["run_id"]
    secret = tmp_path / "secret.png"
    secret.write_bytes((built.images / "val" / "green" / "000.png").read_bytes())  # an image, to be drawn if read
    root = Store(store).meta()["dataset_roots"]["val"]
    part = sorted((store / "samples" / "val").rglob("*.parquet"))[0]
    table = pq.read_table(part)
    edited = outside.format(tmp=tmp_path, root=root)
    paths = [edited] * table.num_rows  # whichever image a figure reads
    pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), part)
    before, read_before = snapshot(store), secret.stat().st_atime_ns
    for command in (["report", "--out", tmp_path / "report"], ["evaluate", run_id, "--plots", tmp_path / "plots"]):
        assert_refused(cli(*command, "--store", store, "--device", "cpu"), f"image {edited!r} of split 'val' lies "
                       f"outside the split's folder {root}", "the store was edited")
    assert snapshot(store) == before and not (tmp_path / "report").exists() and not (tmp_path / "plots").exists()
    assert secret.stat().st_atime_ns == read_before
    checked = cli("check", "--store", store)
    assert checked.exit_code == 2
    assert (f"problem: {len(paths)} row(s) of split 'val' at layer probe have a path outside the split's folder "
            f"{root} (the first: {edited}); ingest never writes that") in " ".join(checked.output.split())


def test_rows_of_other_lengths_or_an_unknown_class_are_named_by_check(cli, fixture_store):
    """Values no ingest writes, which a read would take without a word (an ARV over a cut input sum)."""
    import pyarrow as pa

    store = fixture_store("tiny").store
    shape = Store(store).meta()["layer_shape"]
    channels, input_len = shape["out_channels"], shape["in_channels"] * 9  # tiny_net's probe: a 3 x 3 window
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    rows = pq.read_table(part).to_pylist()
    assert len(rows) >= 3 and all(len(r["attribution"]) == channels and len(r["input_sum"]) == input_len for r in rows)
    rows[0]["attribution"] = rows[0]["attribution"][:2]
    rows[1]["input_sum"] = rows[1]["input_sum"][:1]
    rows[2]["target"] = 99
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(part)), part)
    checked = cli("check", "--store", store)
    said = " ".join(checked.output.split())
    assert checked.exit_code == 2
    for text in (f"1 row(s) of split 'train' at layer probe have an attribution of other than {channels} values",
                 f"1 row(s) of split 'train' at layer probe have input sums of other than {input_len} values",
                 "1 row(s) of split 'train' at layer probe have a target that is no class of the store"):
        assert text in said, said


@pytest.mark.parametrize("recorded", ["dataset:torch.utils.data.Dataset of 9 items", None, "relative/val",
                                      "{root}/"], ids=["a Dataset's", "none", "relative", "a trailing slash"])
def test_a_split_folder_no_ingest_records_is_named_by_check_and_refused_by_the_figures(cli, fixture_store, tmp_path,
                                                                                       recorded):
    """The rows' files are read only below a folder an ingest records; a catalog edited to record another kind
    (a Dataset's root on a store of image files, whose rows would then be opened unchecked) is named, and `check`
    and the figures agree."""
    import duckdb

    built = fixture_store("opponent-colour-run")
    store, run_id = built.store, built.info["run_id"]
    root = Store(store).meta()["dataset_roots"]["val"]
    with duckdb.connect(str(store / "catalog.duckdb")) as catalog:
        if recorded is None:
            catalog.execute("DELETE FROM store_meta WHERE key = 'dataset_root:val'")
        else:
            catalog.execute("UPDATE store_meta SET value = ? WHERE key = 'dataset_root:val'",
                            [json.dumps(recorded.format(root=root))])
    before = snapshot(store)
    for command in (["report", "--out", tmp_path / "report"], ["evaluate", run_id, "--plots", tmp_path / "plots"]):
        assert_refused(cli(*command, "--store", store, "--device", "cpu"), "split 'val' of the store: ",
                       "ingest the images into a new store")
    checked = cli("check", "--store", store)
    said = " ".join(checked.output.split())
    assert checked.exit_code == 2 and "problem: split 'val': " in said, said
    assert ("ingest the split again (polysem ingest DATA_DIR --split val), which records it" if recorded is None
            else "the catalog was edited") in said
    assert "a path outside" not in said  # the folder is named once, not each of its rows
    assert snapshot(store) == before and not (tmp_path / "report").exists() and not (tmp_path / "plots").exists()


@pytest.mark.parametrize("column", ["path", "target"])
def test_a_row_without_a_path_or_a_target_is_named_by_check(cli, fixture_store, column):
    import pyarrow as pa

    store = fixture_store("tiny").store
    part = sorted((store / "samples" / "train").rglob("*.parquet"))[0]
    table = pq.read_table(part)
    index = table.schema.get_field_index(column)
    values = table.column(column).to_pylist()
    values[0] = None
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type)),
                   part)
    checked = cli("check", "--store", store)
    said = " ".join(checked.output.split())
    assert checked.exit_code == 2
    assert ("1 row(s) of split 'train' at layer probe have " + ("a path outside the split's folder" if column == "path"
            else "a target that is no class of the store")) in said, said
