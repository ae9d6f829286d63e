"""A store never runs code on its own say-so.

The attack: a received store whose store_meta names the model `evilmod:build`, to be imported from a
folder inside the store (`STORE/artifacts`), where an `evilmod.py` writes a marker file when imported.
Every command that rebuilds the model refuses in one line naming the module and `--trust-code`, before
anything is imported (the marker never appears), and leaves the store byte-identical; with the code
copied to a folder outside the store and named by `--trust-code` (or POLYSEM_TRUST_CODE) it runs."""

import json
import os
import shutil
import sys
from pathlib import Path

import duckdb
import pytest

from polysem.errors import ModelError, RunError
from polysem.method.runs import load_model
from polysem.query import Store
from polysem.util.imports import TRUST_ENV, code_folder
from tests.helpers import ROOT, assert_refused, snapshot

EVIL = """\
from pathlib import Path
Path({marker!r}).write_text("evilmod ran")
from tests.models import opponent_colour_net as build
"""


def set_meta(store: Path, **values) -> None:
    con = duckdb.connect(str(store / "catalog.duckdb"))
    try:
        for key, value in values.items():
            con.execute("INSERT OR REPLACE INTO store_meta VALUES (?, ?)", [key, json.dumps(value)])
    finally:
        con.close()


@pytest.fixture
def evil(fixture_store, tmp_path, monkeypatch):
    """(store, run id, marker, data): the opponent-colour store rewritten to name evilmod:build from
    STORE/artifacts, where evilmod.py waits."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    sys.modules.pop("evilmod", None)
    built = fixture_store("opponent-colour-run")
    store, marker = built.store, tmp_path / "marker"
    (store / "artifacts" / "evilmod.py").write_text(EVIL.format(marker=str(marker)))
    set_meta(store, model="evilmod:build", model_import_root=str(store / "artifacts"))
    yield store, built.info["run_id"], marker, built.images
    sys.modules.pop("evilmod", None)


def commands(run_id: str, data: Path, out: Path) -> dict[str, list]:
    """Every command that rebuilds the store's model."""
    return {
        "verify": ["verify", run_id],
        "evaluate": ["evaluate", run_id, "--plots", out / "plots"],
        "report": ["report", "--out", out / "report"],
        "visualize": ["visualize", run_id, "--size", 8, "--steps", 1],
        "visualize --channel": ["visualize", "--channel", 0, "--size", 8, "--steps", 1],
        "disentangle": ["disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red"],
        "ingest": ["ingest", data, "--split", "holdout"],
    }


@pytest.mark.parametrize("name", list(commands("RUN", Path("/d"), Path("/o"))))
def test_every_command_refuses_code_inside_the_store(cli, evil, tmp_path, name):
    store, run_id, marker, images = evil
    more = tmp_path / "more" / "holdout"
    shutil.copytree(images / "val", more)
    before = snapshot(store)
    result = cli(*commands(run_id, more.parent, tmp_path)[name], "--store", store)
    assert_refused(result, "evilmod:build", f"{store / 'artifacts'}, inside the store", "--trust-code FOLDER",
                   TRUST_ENV)
    assert not marker.exists() and "evilmod" not in sys.modules
    assert snapshot(store) == before


def test_the_api_refuses_too(evil):
    store, run_id, marker, _ = evil
    with pytest.raises(ModelError, match=r"evilmod:build .*inside the store.*`trust_code`=FOLDER"):
        load_model(store, run_id)
    with pytest.raises(ModelError, match="inside the store"):
        load_model(Store(store), run_id)
    assert not marker.exists() and "evilmod" not in sys.modules


@pytest.mark.parametrize("root", ["relative", "link", "missing", "linked-module", "none"])
def test_other_recorded_folders_are_refused_before_import(cli, evil, tmp_path, monkeypatch, root):
    """A relative folder, a link into the store, a folder this machine lacks (a store sent from elsewhere;
    the current folder is never tried instead, not even when it holds the module), a folder outside the store
    whose module is a link into it, and no recorded folder at all."""
    store, run_id, marker, _ = evil
    outside = tmp_path / "outside"
    outside.mkdir()
    recorded, expected = {
        "relative": ("artifacts", "relative folder 'artifacts'"),
        "link": (str(outside / "link"), "through a link or /proc"),
        "missing": ("/nonexistent/alice/code", "does not exist on this machine"),
        "linked-module": (str(outside), "inside the store"),
        "none": (None, "without the folder it was imported from"),
    }[root]
    (outside / "link").symlink_to(store / "artifacts")
    if root == "linked-module":
        (outside / "evilmod.py").symlink_to(store / "artifacts" / "evilmod.py")
    set_meta(store, model_import_root=recorded)
    before = snapshot(store)
    monkeypatch.chdir(store / "artifacts")  # evilmod.py is right here: still not imported
    result = cli("verify", run_id, "--store", store)
    assert_refused(result, "evilmod:build", expected, "--trust-code FOLDER")
    assert not marker.exists() and "evilmod" not in sys.modules
    assert snapshot(store) == before


def test_info_shows_the_code_and_its_folder(cli, evil, tmp_path):
    store, _, marker, _ = evil
    table = cli("info", "--store", store)
    assert table.exit_code == 0, table.output
    line = next(ln for ln in table.output.splitlines() if ln.startswith("model code"))
    assert "evilmod:build REFUSED" in line and "inside the store" in line and "--trust-code" in line
    assert "tests.models:to_tensor imported from" in table.output  # the transform's folder is outside: fine
    code = json.loads(cli("info", "--store", store, "--format", "json").output)["code"]
    assert code["model"]["spec"] == "evilmod:build" and code["model"]["status"] == "refused"
    assert code["model"]["import_root"] == str(store / "artifacts") and code["model"]["imports_from"] is None
    assert code["transform"]["status"] == "trusted (recorded)"
    trusted = tmp_path / "code"
    trusted.mkdir()
    shutil.copy(store / "artifacts" / "evilmod.py", trusted)
    code = json.loads(cli("info", "--store", store, "--format", "json", "--trust-code", trusted).output)["code"]
    assert code["model"] == {"spec": "evilmod:build", "import_root": str(store / "artifacts"),
                             "imports_from": str(trusted), "module_file": str(trusted / "evilmod.py"),
                             "status": "trusted (named)", "reason": None}
    assert not marker.exists()  # info imports nothing


def test_named_code_outside_the_store_runs(cli, evil, tmp_path, monkeypatch):
    store, run_id, marker, _ = evil
    trusted = tmp_path / "code"
    trusted.mkdir()
    shutil.copy(store / "artifacts" / "evilmod.py", trusted)  # the user read it and keeps a copy
    result = cli("verify", run_id, "--limit", 1, "--trust-code", trusted, "--store", store)
    assert result.exit_code == 0, result.output
    assert marker.exists()
    marker.unlink()
    sys.modules.pop("evilmod", None)
    monkeypatch.setenv(TRUST_ENV, str(trusted))  # the environment variable does the same, for the API too
    assert load_model(store, run_id) is not None and marker.exists()
    sys.modules.pop("evilmod", None)
    monkeypatch.delenv(TRUST_ENV)
    assert load_model(Store(store, trust_code=trusted), run_id) is not None


def test_a_trusted_folder_inside_the_store_is_refused(cli, evil, tmp_path, monkeypatch):
    store, run_id, marker, _ = evil
    result = cli("verify", run_id, "--trust-code", store / "artifacts", "--store", store)
    assert_refused(result, f"trusted folder {store / 'artifacts'} is inside the store", "--trust-code")
    monkeypatch.setenv(TRUST_ENV, "artifacts")
    assert_refused(cli("verify", run_id, "--store", store), TRUST_ENV, "relative folder 'artifacts'")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(TRUST_ENV, str(empty))
    assert_refused(cli("verify", run_id, "--store", store), f"(the trusted folders {empty} hold no evilmod)",
                   "inside the store")
    assert not marker.exists() and "evilmod" not in sys.modules


def test_torchvision_models_need_no_trust(cli, fixture_store, tmp_path):
    assert code_folder("resnet50", "model", None, tmp_path) is None
    assert code_folder("imagenet", "transform", None, tmp_path) is None
    store = fixture_store("resnet50").store
    code = json.loads(cli("info", "--store", store, "--format", "json").output)["code"]
    assert code["model"]["status"] == "no code" and code["model"]["spec"] == "resnet50"
    table = cli("info", "--store", store).output
    assert "model code     none: resnet50 is a torchvision model" in table


def test_a_first_ingest_never_imports_from_inside_the_store(cli, tmp_path, fixture_store, monkeypatch):
    """Code the user names is taken from the current folder, but not when that folder is inside the store."""
    images = fixture_store("colour").images
    store = tmp_path / "store"
    (store / "code").mkdir(parents=True)
    (store / "code" / "mine.py").write_text("from tests.models import colour_net as build\n")
    monkeypatch.chdir(store / "code")
    result = cli("ingest", images, "--store", store, "--model", "mine:build", "--layer", "probe",
                 "--transform", "tests.models:to_tensor")
    assert_refused(result, "cannot import mine", "PYTHONPATH")


def test_a_received_catalogs_own_view_definitions_are_not_trusted(cli, colour_store):
    """A catalog may redefine `classes` (keeping polysem's digest) to read a local file: reads run polysem's SQL."""
    import duckdb

    secret = colour_store.parent / "secret.txt"
    secret.write_text("not for the report")
    con = duckdb.connect(str(colour_store / "catalog.duckdb"))
    con.execute(f"CREATE OR REPLACE VIEW classes AS SELECT 0 AS class_id, content AS folder, content AS name, "
                f"NULL AS wnid, 0 AS logit FROM read_text('{secret}')")
    con.close()
    shown = cli("classes", "--store", colour_store, "--format", "csv")
    assert shown.exit_code == 0 and "not for the report" not in shown.output and "green" in shown.output


def test_a_run_id_or_file_path_polysem_never_writes_is_refused(cli, colour_store, tmp_path):
    import duckdb

    from polysem.method.runs import disentangle
    from tests.helpers import snapshot

    run_id = disentangle(colour_store, 0, concept1=["green"], concept2=["red"], progress=False).run_id
    for column, value in (("run_id", "../../../../tmp/pwn"), ("artifact", "/etc/passwd")):
        con = duckdb.connect(str(colour_store / "catalog.duckdb"))
        con.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", [value, run_id])
        con.close()
        before = snapshot(colour_store)
        result = cli("report", "--store", colour_store, "--out", tmp_path / "report")
        assert result.exit_code == 2 and "damaged or was edited" in result.output, result.output
        assert snapshot(colour_store) == before and not (tmp_path / "tmp").exists()
        con = duckdb.connect(str(colour_store / "catalog.duckdb"))
        con.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", [run_id if column == "run_id" else
                                                                          f"artifacts/{run_id[:10]}.pt", value])
        con.close()


# -- recorded folders that are real, private and outside the interpreter ---------------------------

def test_a_recorded_folder_through_proc_is_not_the_current_folder(cli, evil, tmp_path, monkeypatch):
    """/proc/self/cwd leads to whatever folder the user runs from, where a received bundle may have left
    evilmod.py: refused, and `info` says so, without importing anything."""
    store, run_id, marker, _ = evil
    here = tmp_path / "here"
    here.mkdir()
    (here / "evilmod.py").write_text((store / "artifacts" / "evilmod.py").read_text())
    set_meta(store, model_import_root="/proc/self/cwd")
    monkeypatch.chdir(here)
    with pytest.raises(ModelError, match=r"/proc/self/cwd, which leads to .*here \(through a link or /proc\)"):
        load_model(store, run_id)
    monkeypatch.chdir(ROOT)
    assert_refused(cli("verify", run_id, "--store", store), "/proc/self/cwd", "through a link or /proc")
    line = next(ln for ln in cli("info", "--store", store).output.splitlines() if ln.startswith("model code"))
    assert "REFUSED" in line and "through a link or /proc" in line
    assert not marker.exists() and "evilmod" not in sys.modules


def test_a_namespace_package_is_imported_from_the_recorded_folder_alone(evil, tmp_path, monkeypatch):
    """srv.evilmod recorded from a folder whose srv/ holds no evilmod: the current folder's srv/ (a namespace
    portion Python would merge) is never searched."""
    store, run_id, marker, _ = evil
    recorded = tmp_path / "recorded"
    (recorded / "srv").mkdir(parents=True)
    (recorded / "srv" / "other.py").write_text("")
    here = tmp_path / "here"
    (here / "srv").mkdir(parents=True)
    (here / "srv" / "evilmod.py").write_text((store / "artifacts" / "evilmod.py").read_text())
    set_meta(store, model="srv.evilmod:build", model_import_root=str(recorded))
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))  # as a notebook started in that folder has it
    with pytest.raises(ModelError, match=r"cannot import srv\.evilmod"):
        load_model(store, run_id)
    assert not marker.exists() and "srv.evilmod" not in sys.modules
    sys.modules.pop("srv", None)


def test_a_folder_every_user_can_write_is_refused_unless_named(evil, tmp_path):
    store, run_id, marker, _ = evil
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "evilmod.py").write_text((store / "artifacts" / "evilmod.py").read_text())
    shared.chmod(0o777)
    set_meta(store, model_import_root=str(shared))
    with pytest.raises(ModelError, match=r"can be written by every user of this machine"):
        load_model(store, run_id)
    assert not marker.exists()
    assert load_model(Store(store, trust_code=shared), run_id) is not None and marker.exists()
    sys.modules.pop("evilmod", None)


def test_the_interpreters_own_library_is_no_recorded_folder(cli, evil):
    """A store naming `code:interact` (a console on stdin) or `os:abort` from the standard library."""
    import sysconfig

    store, run_id, _, _ = evil
    for spec in ("code:interact", "os:abort", "venv:main"):
        set_meta(store, model=spec, model_import_root=sysconfig.get_paths()["stdlib"])
        with pytest.raises(ModelError, match=r"is part of the Python installation"):
            load_model(store, run_id)
        assert_refused(cli("verify", run_id, "--store", store), spec, "part of the Python installation")


def test_info_names_the_file_that_would_run(cli, evil, tmp_path):
    store, _, marker, _ = evil
    trusted = tmp_path / "code"
    trusted.mkdir()
    shutil.copy(store / "artifacts" / "evilmod.py", trusted)
    shown = cli("info", "--store", store, "--trust-code", trusted).output
    line = next(ln for ln in shown.splitlines() if ln.startswith("model code"))
    assert f"runs {trusted / 'evilmod.py'}" in line
    assert not marker.exists()


class Poison:
    """Any object: a pickle of it runs code of the pickler's choosing when loaded unsafely."""


def test_a_poisoned_model_file_is_named_without_torchs_advice(evil):
    """A run's model file that holds objects (a pickle of anything): torch's weights-only loader refuses it;
    polysem names the file and says it is not one it wrote, never to load it unsafely."""
    import torch

    store, run_id, _, _ = evil
    artifact = next((store / "artifacts").glob("*.pt"))
    torch.save({"channels": Poison()}, artifact)
    trusted = store.parent / "code"
    trusted.mkdir()
    shutil.copy(store / "artifacts" / "evilmod.py", trusted)
    with pytest.raises(RunError) as refused:
        load_model(Store(store, trust_code=trusted), run_id)
    message = str(refused.value)
    assert str(artifact) in message and "not a file polysem wrote" in message
    assert "weights_only" not in message and "Weights only" not in message
    sys.modules.pop("evilmod", None)


def test_a_folder_of_another_user_or_below_an_open_folder_is_refused(evil, tmp_path):
    """A store sent by another user of this machine names their folder: refused, as is a folder below one that
    every user may rename things in (no sticky bit)."""
    store, run_id, marker, _ = evil
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "evilmod.py").write_text((store / "artifacts" / "evilmod.py").read_text())
    os.chown(theirs, 65534, 65534)
    set_meta(store, model_import_root=str(theirs))
    with pytest.raises(ModelError, match=r"belongs to another user \(uid 65534\)"):
        load_model(store, run_id)
    open_folder = tmp_path / "open"
    (open_folder / "sub").mkdir(parents=True)
    (open_folder / "sub" / "evilmod.py").write_text((store / "artifacts" / "evilmod.py").read_text())
    open_folder.chmod(0o777)
    set_meta(store, model_import_root=str(open_folder / "sub"))
    with pytest.raises(ModelError, match=r"which every user can write \(without the sticky bit\)"):
        load_model(store, run_id)
    assert not marker.exists() and "evilmod" not in sys.modules
