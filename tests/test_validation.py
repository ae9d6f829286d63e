"""Bad input is refused before anything is written: no store is created, an existing one stays byte-identical."""

import json
import os

import pytest
from polysem.query import Store

from tests.helpers import TINY, assert_refused, make_image_folder, snapshot


def with_model(model, transform="tests.models:small"):
    return ["--model", model, "--layer", "probe", "--transform", transform]


def symlink_loop(root):
    os.symlink(root / "train", root / "train" / "cat" / "up")


def symlink_to_other_class(root):
    os.symlink(root / "train" / "dog", root / "train" / "cat" / "dogs")


def non_utf8_name(root):
    path = os.path.join(os.fsencode(root / "train" / "cat"), b"caf\xe9.png")
    with open(path, "wb") as handle, open(root / "train" / "cat" / "000.png", "rb") as source:
        handle.write(source.read())


def classes_file(content: bytes):
    def write(root):
        (root / "classes.json").write_bytes(content)
    return write


def extra_class(root):
    make_image_folder(root, "train", {"fox": 1})


# (id, command-line arguments after DATA_DIR, a change to the data folder, fragments of the one error line)
CASES = [
    ("unused layer", with_model("tests.models:unused_layer_net")[:2] + ["--layer", "spare", "--transform", "tests.models:small"],
     None, ["layer 'spare' never runs"]),
    ("output not N x K", with_model("tests.models:tuple_net"), None, ["not 1 x K logits"]),
    ("transform channel count", with_model("tests.models:tiny_net", "tests.models:gray"), None,
     ["the model fails on", "(1, 16, 16)", "--transform"]),
    ("callable raises", with_model("tests.models:raising_net"), None, ["raising_net failed", "no such checkpoint"]),
    ("callable exits", with_model("tests.models:exiting_net"), None, ["exiting_net failed", "SystemExit"]),
    ("more folders than outputs", TINY, extra_class, ["3 outputs", "4 class folders"]),
    ("non-UTF-8 file name", TINY, non_utf8_name, ["is not valid UTF-8", "rename it"]),
    ("num-workers -1", TINY + ["--num-workers", "-1"], None, ["--num-workers must be from 0 to"]),
    ("batch-size 0", TINY + ["--batch-size", "0"], None, ["--batch-size must be from 1 to 65536"]),
    ("limit 0", TINY + ["--limit", "0"], None, ["--limit must be from 1 to 2**63 - 1"]),
    ("limit -1", TINY + ["--limit", "-1"], None, ["--limit must be from 1 to 2**63 - 1"]),
    ("empty classes", TINY + ["--classes", ""], None, ["--classes is empty"]),
    ("classes.json list", TINY, classes_file(b'["cat", "dog"]'), ["holds a list, not an object"]),
    ("classes.json string entry", TINY, classes_file(b'{"cat": "Felis"}'), ["entry of 'cat' is a str"]),
    ("classes.json number entry", TINY, classes_file(b'{"cat": 3}'), ["entry of 'cat' is a int"]),
    ("classes.json binary", TINY, classes_file(b"\x89PNG\r\n\x1a\n\xff\xfe"), ["not valid UTF-8 JSON"]),
    ("classes.json bad logit", TINY, classes_file(b'{"cat": {"logit": "0"}}'), ["logit must be an integer"]),
    ("classes.json bad wnid", TINY, classes_file(b'{"cat": {"wnid": "cat"}}'), ["is not a WordNet noun id"]),
    ("split absolute", TINY + ["--split", "/tmp"], None, ["bad --split '/tmp'"]),
    ("split with slash", TINY + ["--split", "train/cat"], None, ["bad --split 'train/cat'"]),
    ("split dot-dot", TINY + ["--split", ".."], None, ["bad --split '..'"]),
    ("symlink loop", TINY, symlink_loop, ["links to", "holds it or another class"]),
    ("symlink into another class", TINY, symlink_to_other_class, ["links to", "another class"]),
]


@pytest.mark.parametrize("args, change, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_creates_no_store(cli, data_dir, store_path, args, change, fragments):
    if change is not None:
        change(data_dir)
    extra = [] if "--split" in args else ["--split", "train"]
    assert_refused(cli("ingest", data_dir, *extra, "--store", store_path, *args), *fragments)
    assert not store_path.exists()


EXISTING = ["non-UTF-8 file name", "num-workers -1", "limit 0", "empty classes",
            "split absolute", "split dot-dot", "symlink loop"]


@pytest.mark.parametrize("args, change, fragments", [c[1:] for c in CASES if c[0] in EXISTING], ids=EXISTING)
def test_bad_input_leaves_an_existing_store_byte_identical(cli, data_dir, store_path, args, change, fragments):
    assert cli("ingest", data_dir, "--split", "val", "--store", store_path, *TINY).exit_code == 0
    before = snapshot(store_path)
    if change is not None:
        change(data_dir)
    extra = [] if "--split" in args else ["--split", "train"]
    result = cli("ingest", data_dir, *extra, "--store", store_path, *[a for a in args if a not in TINY or a in (
        "--split",)])
    assert_refused(result, *fragments)
    assert snapshot(store_path) == before


def test_images_of_mixed_sizes_without_resizing_are_batched_per_size(cli, tmp_path, store_path):
    root = make_image_folder(tmp_path / "d", "train", {"a": 3, "b": 2, "c": 2}, size=(16, 16))
    make_image_folder(root, "train", {"a": 2, "b": 2}, size=(24, 20), seed=5)  # overwrites some with a new size
    result = cli("ingest", root, "--store", store_path, *with_model("tests.models:tiny_net", "tests.models:to_tensor"),
                 "--batch-size", 4)
    assert result.exit_code == 0, result.output
    positions = Store(store_path).sql("SELECT positions, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL").to_pylist()
    assert positions == [{"positions": 64, "n": 3}, {"positions": 120, "n": 4}]  # 16x16 -> 8x8, 24x20 -> 12x10


def test_a_store_with_incomplete_metadata_is_completed_by_the_next_ingest(cli, data_dir, store_path):
    """A kill between the first ingest's files and its metadata transaction leaves a catalog without
    metadata: every command says so in one line, and the next ingest completes the store."""
    assert cli("ingest", data_dir, "--store", store_path, *TINY).exit_code == 0
    import duckdb

    conn = duckdb.connect(str(store_path / "catalog.duckdb"))
    conn.execute("DELETE FROM store_meta WHERE key IN ('layer_shape', 'transform')")
    conn.close()
    assert_refused(cli("info", "--store", store_path), "never completely created", "polysem ingest")
    again = cli("ingest", data_dir, "--store", store_path, *TINY)
    assert again.exit_code == 0, again.output
    assert "0 images stored, 10 already there" in again.output
    assert Store(store_path).meta()["layer_shape"]["out_channels"] == 5


def test_concurrent_first_ingests_of_two_splits_keep_both_roots(data_dir, store_path):
    from tests.zygote import polysem_process

    env = {**os.environ, "POLYSEM_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = [polysem_process("ingest", data_dir, "--split", split, "--store", store_path, *TINY, env=env)
            for split in ("train", "val")]
    for run in runs:
        output = run.communicate(timeout=120)[0].decode()
        assert run.returncode == 0, output
    meta = Store(store_path).meta()
    assert meta["dataset_roots"] == {"train": str(data_dir / "train"), "val": str(data_dir / "val")}
    counts = Store(store_path).sql("SELECT split, count(*) AS n FROM samples GROUP BY split ORDER BY split").to_pylist()
    assert counts == [{"split": "train", "n": 10}, {"split": "val", "n": 6}]


def test_a_split_from_another_folder_is_refused(cli, data_dir, tmp_path, store_path):
    assert cli("ingest", data_dir, "--store", store_path, *TINY).exit_code == 0
    other = make_image_folder(tmp_path / "other", "train", {"cat": 1, "dog": 1, "emu": 1})
    before = snapshot(store_path)
    assert_refused(cli("ingest", other, "--store", store_path), "was ingested from", "another --split")
    assert snapshot(store_path) == before


def test_model_module_is_found_from_any_working_folder(tmp_path, data_dir, monkeypatch):
    """A module:callable model importable only from the folder of the first ingest still loads later,
    from elsewhere; `info` says where it comes from. The first ingest is a process started in the user's folder
    (whose own modules are named like polysem's folders); the later commands run in this process, from another
    folder, each with the user's module not yet imported, as in a new process."""
    import shutil
    import subprocess
    import sys

    from typer.testing import CliRunner

    from polysem.cli import app
    from tests.helpers import ROOT

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "tests" / "models.py", project / "mynets.py")
    for shadow in ("ingest", "query", "sql"):  # a user's own modules named like polysem's folders
        (project / f"{shadow}.py").write_text("raise ImportError('the user module, not polysem')\n")
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["POLYSEM_OFFLINE"] = "1"
    first = subprocess.run([sys.executable, "-m", "polysem.cli", "ingest", str(data_dir), "--store", str(store),
                            "--model", "mynets:colour_net", "--layer", "probe", "--transform", "mynets:to_tensor"],
                           cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "mynets" not in sys.modules

    def polysem(*args):
        sys.modules.pop("mynets", None)
        return CliRunner().invoke(app, [str(a) for a in args])

    try:
        val = polysem("ingest", data_dir, "--split", "val", "--store", store)
        assert val.exit_code == 0, val.output
        info = polysem("info", "--store", store)
        assert f"mynets:colour_net imported from {project}" in info.stdout
        run = polysem("disentangle", "--channel", 0, "--concept1", 0, "--concept2", 1, "--force", "--rho", "0.5",
                      "--store", store, "--format", "json")
        assert run.exit_code == 0, run.output
        assert json.loads(run.stdout)["max_logit_diff"] < 1e-5
    finally:
        sys.modules.pop("mynets", None)


def test_an_ingest_in_which_every_image_fails_exits_2(cli, tmp_path, store_path):
    root = make_image_folder(tmp_path / "d", "train", {"cat": 2, "dog": 2, "emu": 2})
    for image in (root / "train").rglob("*.png"):
        image.write_bytes(b"not an image")
    assert_refused(cli("ingest", root, "--store", store_path, *TINY), "cannot be read", "UnidentifiedImageError")
    assert not store_path.exists()
