"""Text in and out of polysem: a classes.json with a byte order mark is read; every `Error:` line has its
control and bidirectional characters escaped; CSV cells a spreadsheet would run as formulas are made inert;
and a write that fails names the user's target, never a hidden temporary file, lock or staging folder."""

import builtins
import errno
import io
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

from polysem.errors import DiskFull, NotWritable
from polysem.query.serialise import to_csv
from polysem.util import atomic
from tests.helpers import TINY, assert_refused, assert_refused_last_line, make_image_folder, snapshot

BOM = b"\xef\xbb\xbf"
HIDDEN = re.compile(r"/\.[^/\s]")  # a path component starting with a dot: a temporary file, a lock, staging


# -- a classes.json with a byte order mark --------------------------------------------------------

def test_a_data_folder_classes_json_with_a_byte_order_mark_is_read(cli, tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 2, "b": 2})
    (data / "classes.json").write_bytes(BOM + json.dumps({"a": {"name": "first", "logit": 0},
                                                                        "b": {"name": "second", "logit": 1}}).encode())
    store = tmp_path / "store"
    result = cli("ingest", data, "--store", store, *TINY)
    assert result.exit_code == 0, result.output
    shown = cli("classes", "--store", store, "--format", "json")
    assert shown.exit_code == 0, shown.output
    assert {r["folder"]: r["name"] for r in json.loads(shown.stdout)} == {"a": "first", "b": "second"}


def test_a_relabel_file_with_a_byte_order_mark_is_read(cli, colour_store, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_bytes(BOM + json.dumps({"green": {"name": "leaf green"}}).encode())
    result = cli("classes", "--set", labels, "--store", colour_store, "--format", "json")
    assert result.exit_code == 0, result.output
    assert {r["folder"]: r["name"] for r in json.loads(result.stdout)}["green"] == "leaf green"


def test_a_byte_order_mark_alone_is_still_no_json(cli, colour_store, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_bytes(BOM)
    assert_refused(cli("classes", "--set", labels, "--store", colour_store), "is not valid UTF-8 JSON")


# -- every Error line escaped ---------------------------------------------------------------------

def _no_raw_controls(text: str) -> None:
    assert "\u202e" not in text and "\x1b" not in text, ascii(text)


def test_an_error_naming_a_data_folder_with_controls_shows_them_escaped(cli, tmp_path):
    data = tmp_path / "evil\u202eatad\x1b[31m"
    (data / "train" / "cat").mkdir(parents=True)  # a class folder without images: refused
    result = cli("ingest", data, "--store", tmp_path / "store", *TINY)
    assert_refused(result, "evil\\u202eatad\\x1b[31m")
    _no_raw_controls(result.output)


def test_an_error_of_the_os_or_a_library_bug_shows_controls_escaped(cli, colour_store, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/data/\u202egnp.exe\x1b[2J")

    monkeypatch.setattr("polysem.query.screening.polysemantic_pairs", broken)
    result = cli("screen", "--store", colour_store)
    assert_refused(result, "Input/output error (/data/\\u202egnp.exe\\x1b[2J)")
    _no_raw_controls(result.output)


def test_a_usage_error_shows_controls_escaped(capsys, monkeypatch):
    from polysem.cli import main

    monkeypatch.setattr("sys.argv", ["polysem", "screen", "--nonsense\u202e\x1b[2J"])
    with pytest.raises(SystemExit) as stopped:
        main()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), ascii(err)
    assert "--nonsense\\u202e\\x1b[2J" in lines[0]
    _no_raw_controls(err)


# -- CSV cells a spreadsheet would run ------------------------------------------------------------

FORMULA = "=cmd|' /C calc'!A0"


def test_a_formula_class_name_is_written_inert_and_numbers_stay_numbers(cli, colour_store, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"green": {"name": FORMULA}}))
    assert cli("classes", "--set", labels, "--store", colour_store).exit_code == 0
    out = tmp_path / "x.csv"
    query = "SELECT name, -0.5 AS score, -3 AS delta FROM classes WHERE folder = 'green'"
    result = cli("sql", query, "--out", out, "--store", colour_store)
    assert result.exit_code == 0, result.output
    assert out.read_text() == f"name,score,delta\n\"'{FORMULA}\",-0.5,-3\n"
    printed = cli("sql", query, "--format", "csv", "--store", colour_store)
    assert printed.exit_code == 0 and printed.stdout == out.read_text(), printed.output
    exported = tmp_path / "classes.csv"
    assert cli("export", "classes", "--out", exported, "--store", colour_store).exit_code == 0
    assert f"\"'{FORMULA}\"" in exported.read_text() and f",{FORMULA}" not in exported.read_text()


@pytest.mark.parametrize("text, cell", [
    ("=1+1", "\"'=1+1\""),
    ("+41", "\"'+41\""),
    ("-2+3", "\"'-2+3\""),
    ("-0.5", "\"'-0.5\""),  # text that reads as a number is still text
    ("@SUM(A1)", "\"'@SUM(A1)\""),
    ("\t=1", "\"'\\t=1\""),  # the tab escaped, as every control character in CSV
    ("\r=1", "\"'\\r=1\""),
    ('=HYPERLINK("x")', "\"'=HYPERLINK(\"\"x\"\")\""),
    ("a=b", "a=b"),
    ("", ""),
])
def test_text_cells_starting_a_formula_are_quoted_and_prefixed(text, cell):
    assert to_csv(pa.table({"t": [text], "n": [1]})).splitlines()[1] == f"{cell},1"


def test_numbers_nulls_lists_and_headers_in_csv():
    table = pa.table({"=h": ["x"], "f": [-0.5], "i": [-7], "none": pa.array([None], pa.string()),
                      "l": [[-1.0]], "b": [True]})
    assert to_csv(table) == "\"'=h\",f,i,none,l,b\nx,-0.5,-7,,[-1.0],true\n"
    assert to_csv(pa.table({"t": pa.array([None], pa.string())})) == 't\n""\n'  # a lone empty cell is quoted


# -- a write that fails names the user's target ---------------------------------------------------

@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): every write under `folder` made from Python fails as on a read-only mount (EROFS):
    opening for writing, creating a folder, removing, renaming and linking. Writes in C++ (Arrow, DuckDB)
    are not stopped; the tests use commands whose first write is made from Python."""

    def make(folder: Path) -> None:
        root = os.path.abspath(folder)

        def inside(path) -> bool:
            if isinstance(path, int):
                return False
            name = os.path.abspath(os.fsdecode(path))
            return name == root or name.startswith(root + os.sep)

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

        real_open, real_os_open = builtins.open, os.open

        def fake_open(file, mode="r", *args, **kwargs):
            if not isinstance(file, int) and any(c in mode for c in "wax+") and inside(file):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC) and inside(path):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def refusing(real, exists_first=False):
            def fake(*paths, **kwargs):
                for path in paths[:2]:
                    if isinstance(path, (str, bytes, os.PathLike)) and inside(path):
                        if exists_first and os.path.lexists(path):  # as Linux: EEXIST before EROFS
                            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
                        refuse(path)
                return real(*paths, **kwargs)
            return fake

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", refusing(os.mkdir, exists_first=True))
        for name in ("unlink", "remove", "rmdir", "rename", "replace", "link"):
            monkeypatch.setattr(os, name, refusing(getattr(os, name)))

    return make


def _names_no_hidden_file(result) -> str:
    last = result.output.strip().splitlines()[-1]
    assert not HIDDEN.search(last) and ".tmp" not in last, last
    assert "Read-only file system" in last and "a read-write mount" in last, last
    assert result.output.count("Error") == 1 and "Traceback" not in result.output, result.output
    return last


def test_a_refused_atomic_write_names_the_file_not_its_temporary_name(read_only, tmp_path):
    read_only(tmp_path)
    target = tmp_path / "out" / "result.csv"  # its folder cannot be made either
    with pytest.raises(NotWritable) as caught:
        atomic.write_text_atomic("a\n1\n", target)
    assert f"the file system refused to write {target} (Read-only file system)" in str(caught.value)
    assert f"make {tmp_path} writable" in str(caught.value) and not HIDDEN.search(str(caught.value))
    with (pytest.raises(NotWritable, match=re.escape(f"refused to write {tmp_path / 'x.npz'} ")),
          atomic.atomic_path(tmp_path / "x.npz", suffix=".tmp.npz") as tmp):
        tmp.write_bytes(b"")


def test_disentangle_on_a_read_only_store_names_the_model_file(cli, fixture_store, read_only):
    colour_store = fixture_store("opponent-colour-run").store  # its feature maps are cached: the model is the write
    before = snapshot(colour_store)
    read_only(colour_store)
    result = cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", colour_store)
    last = _names_no_hidden_file(result)
    assert re.search(rf"refused to write {re.escape(str(colour_store))}/artifacts/[0-9a-f]{{10}}\.pt ", last), last
    assert f"make {colour_store / 'artifacts'} writable" in last or f"make {colour_store} writable" in last
    assert snapshot(colour_store) == before


def test_verify_on_a_read_only_store_names_its_cache_file(cli, fixture_store, read_only):
    built = fixture_store("opponent-colour-run")
    read_only(built.store)
    result = cli("verify", built.info["run_id"], "--store", built.store)
    last = _names_no_hidden_file(result)
    assert f"refused to write {built.store / 'cache' / 'verify'}" in last and ".npz" in last, last


def _parts_store(tmp_path: Path) -> Path:
    from polysem.ingest import ingest

    data = make_image_folder(tmp_path / "data", "train", {"a": 3, "b": 3, "c": 3})
    ingest(tmp_path / "store", data, model="tests.models:tiny_net", layer="probe", transform="tests.models:small",
           progress=False, rows_per_part=4, compact=False, num_workers=0)
    return tmp_path / "store"


def test_compact_on_a_read_only_store_names_the_split(cli, tmp_path, read_only):
    store = _parts_store(tmp_path)
    before = snapshot(store)
    read_only(store)
    result = cli("compact", "--store", store)
    last = _names_no_hidden_file(result)
    assert_refused(result, f"refused to write {store / 'samples' / 'train'} ", "nothing was written there",
                   f"make {store} writable")
    assert "lock" not in last
    assert snapshot(store) == before


def test_a_compaction_meeting_a_read_only_staging_folder_names_the_split(cli, tmp_path, read_only):
    store = _parts_store(tmp_path)
    read_only(store / ".compact")  # the lock is taken; the staging folder cannot be made
    result = cli("compact", "--store", store)
    _names_no_hidden_file(result)
    assert_refused(result, f"refused to write {store / 'samples' / 'train'} ")


def test_a_compaction_on_a_full_disk_names_the_split(cli, tmp_path, monkeypatch):
    store = _parts_store(tmp_path)
    before = snapshot(store)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    result = cli("compact", "--store", store)
    assert_refused(result, f"no space left on the disk holding {store / 'samples' / 'train'} (",
                   "nothing was written there", "free space on that disk")
    assert not HIDDEN.search(result.output.strip()), result.output
    monkeypatch.undo()
    assert snapshot(store) == before
    done = cli("compact", "--store", store)
    assert done.exit_code == 0 and "rows rewritten" in done.output, done.output


def test_a_report_into_a_read_only_folder_names_that_folder(cli, colour_store, tmp_path, read_only):
    out = tmp_path / "report"
    out.mkdir()
    read_only(out)
    result = cli("report", "--out", out, "--store", colour_store)
    _names_no_hidden_file(result)
    assert_refused_last_line(result, f"refused to write {out} ", "nothing was written there", f"make {out} writable")
    assert list(out.iterdir()) == []


def test_a_full_disk_under_the_model_file_names_it(cli, fixture_store, monkeypatch):
    colour_store = fixture_store("opponent-colour-run").store
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    result = cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", colour_store)
    assert_refused_last_line(result, f"no space left on the disk holding {colour_store / 'artifacts'}/",
                             "that file was not written")
    assert ".tmp" not in result.output and not HIDDEN.search(result.output.strip().splitlines()[-1])
    assert [p for p in (colour_store / "artifacts").iterdir() if p.name.startswith(".")] == []


def test_a_refused_write_inside_a_writing_block_is_named_for_its_target(tmp_path):
    target = tmp_path / "samples" / "train"
    with pytest.raises(NotWritable) as caught, atomic.writing(target, folder=tmp_path, into_folder=True):
        raise NotWritable("inner") from PermissionError(errno.EPERM, "Operation not permitted", "/x/.hidden")
    assert str(caught.value).startswith(f"the file system refused to write {target} (Operation not permitted); "
                                        f"nothing was written there")
    with pytest.raises(DiskFull, match=re.escape(f"holding {target} (")), atomic.writing(target, into_folder=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".x.tmp"))
    with pytest.raises(ValueError), atomic.writing(target):  # anything else passes unchanged
        raise ValueError("not a write")
