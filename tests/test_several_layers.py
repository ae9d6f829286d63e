"""Several layers in one store: one forward and one backward pass store each layer's rows exactly as a store of
that layer alone; a layer's queries read that layer's files only; a layer added later, to a store of this format or
of format 6 (tests/fixtures/format6), sits beside the others; a command that needs a layer is told which."""

import hashlib
import json
import shutil

import duckdb
import pytest

import polysem
from polysem.errors import PolysemError
from polysem.query import Store
from tests.conftest import ROOT
from tests.helpers import assert_refused, make_colour_images, snapshot

MODEL = dict(model="tests.models:colour_transformer", transform="tests.models:to_tensor", progress=False)
FC1, FC2 = "block.fc1", "block.fc2"
ROWS = ("SELECT image_id, path, target, prediction, predicted_logit, target_logit, attribution, input_sum, positions "
        "FROM layer_samples ORDER BY split, image_id")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers") / "data"
    make_colour_images(root, "train", 5, seed=0)
    make_colour_images(root, "val", 3, seed=1)
    return root


@pytest.fixture(scope="module")
def stores(images, tmp_path_factory):
    """A store of both layers from one pass per batch, and a store of each layer alone."""
    base = tmp_path_factory.mktemp("stores")
    for split in ("train", "val"):
        polysem.ingest(base / "both", images, split, layer=[FC1, FC2], **MODEL)
        polysem.ingest(base / "fc1", images, split, layer=FC1, **MODEL)
        polysem.ingest(base / "fc2", images, split, layer=FC2, **MODEL)
    return base


def test_one_pass_stores_each_layer_as_its_own_ingest_does(stores):
    for layer, alone in ((FC1, "fc1"), (FC2, "fc2")):
        together = Store(stores / "both", layer=layer).sql(ROWS).to_pylist()
        assert len(together) == 24 and together == Store(stores / alone).sql(ROWS).to_pylist()
    counts = Store(stores / "both").sql("SELECT layer, count(*) AS n FROM samples GROUP BY layer ORDER BY layer")
    assert counts.to_pylist() == [{"layer": FC1, "n": 24}, {"layer": FC2, "n": 24}]
    assert list(Store(stores / "both").meta(any_layer=True)["layers"]) == [FC1, FC2]


def test_a_layers_queries_never_read_another_layers_rows(stores, tmp_path):
    """The data pages of every fc2 file overwritten (their footers kept, which DuckDB reads to bind the view):
    fc1's screening is unchanged, while reading fc2's rows fails."""
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    expected = polysem.screen(Store(stores / "both", layer=FC1)).to_pylist()
    for part in store.glob(f"samples/*/layer={FC2}/*.parquet"):
        data = bytearray(part.read_bytes())
        footer = int.from_bytes(data[-8:-4], "little") + 8  # the footer's length, its own 4 bytes and "PAR1"
        data[4 : len(data) - footer] = b"\xff" * (len(data) - footer - 4)
        part.write_bytes(bytes(data))
    assert polysem.screen(Store(store, layer=FC1)).to_pylist() == expected
    assert expected and {row["channel"] for row in expected} == {0}  # the planted unit
    with pytest.raises(PolysemError):
        Store(store, layer=FC2).sql("SELECT sum(list_sum(attribution)) FROM layer_samples")


def test_a_command_that_needs_a_layer_names_the_stores_layers(cli, stores, tmp_path):
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    before = snapshot(store)
    assert_refused(cli("screen", "--store", store), "holds 2 layers (block.fc1, block.fc2)", "--layer")
    assert_refused(cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", store),
                   "holds 2 layers", "--layer")
    assert_refused(cli("screen", "--store", store, "--layer", "block.fc9"), "no layer 'block.fc9'",
                   "block.fc1, block.fc2")
    assert snapshot(store) == before
    shown = cli("info", "--store", store, "--format", "json")
    assert list(json.loads(shown.stdout)["layers"]) == [FC1, FC2]


def test_a_run_knows_its_layer_and_its_commands_work_on_it(cli, stores, tmp_path):
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    run = polysem.disentangle(Store(store, layer=FC1), 0, concept1=["green"], concept2=["red"], progress=False)
    assert run.layer == FC1 and run.max_logit_diff < 1e-5
    assert polysem.verify(store, run.run_id, progress=False).resolved  # no layer given: the run's
    assert_refused(cli("verify", run.run_id, "--store", store, "--layer", FC2), f"layer {FC1}, not of {FC2}")
    alone = tmp_path / "fc1"
    shutil.copytree(stores / "fc1", alone)
    single = polysem.disentangle(alone, 0, concept1=["green"], concept2=["red"], progress=False)
    assert (run.sources, run.shared, run.rho) == (single.sources, single.shared, single.rho)


def test_a_layer_added_later_equals_its_own_ingest_and_leaves_the_others(images, stores, tmp_path):
    store = tmp_path / "grown"
    shutil.copytree(stores / "fc1", store)
    before = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in store.glob(f"samples/*/layer={FC1}/*"))
    for split in ("train", "val"):
        summary = polysem.ingest(store, images, split, layer=FC2, **MODEL)
        assert summary.n_written == (15 if split == "train" else 9)
    assert Store(store, layer=FC2).sql(ROWS).to_pylist() == Store(stores / "fc2").sql(ROWS).to_pylist()
    after = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in store.glob(f"samples/*/layer={FC1}/*"))
    assert after == before  # the same bytes (small compacted files are written again under new names)
    again = polysem.ingest(store, images, "train", **MODEL)  # every layer the store holds: all there
    assert again.n_written == 0 and again.n_already == 15


def test_evaluate_names_the_layer_that_lacks_val_images(cli, images, stores, tmp_path):
    """A layer added for train only: the store's other layer has val images (`info` counts them), this one none."""
    store = tmp_path / "grown"
    shutil.copytree(stores / "fc1", store)
    polysem.ingest(store, images, "train", layer=FC2, **MODEL)
    run = polysem.disentangle(Store(store, layer=FC2), 0, concept1=["green"], concept2=["red"], rho=0.5, force=True,
                              progress=False)
    shown = cli("info", "--store", store)
    assert f"split      val: 9 images in 3 classes, 0 unreadable  ({images / 'val'}); by layer: {FC1} 9, {FC2} 0" \
        in shown.output.splitlines(), shown.output
    assert f"split      train: 15 images in 3 classes, 0 unreadable  ({images / 'train'})" in shown.output.splitlines()
    assert json.loads(cli("info", "--store", store, "--format", "json").stdout)["layer_images"] == {
        "train": {FC1: 15, FC2: 15}, "val": {FC1: 9, FC2: 0}}
    before = snapshot(store)
    assert_refused(cli("evaluate", run.run_id, "--store", store, "--device", "cpu"),
                   f"the store has no val images of layer {FC2} to evaluate on",
                   f"polysem ingest DATA_DIR --split val --layer {FC2}")
    assert snapshot(store) == before
    polysem.ingest(store, images, "val", layer=FC2, **MODEL)
    assert cli("evaluate", run.run_id, "--store", store, "--device", "cpu").exit_code == 0
    alone = tmp_path / "train-only"
    polysem.ingest(alone, images, "train", layer=FC1, **MODEL)
    single = polysem.disentangle(alone, 0, concept1=["green"], concept2=["red"], progress=False)
    assert_refused(cli("evaluate", single.run_id, "--store", alone, "--device", "cpu"),
                   "the store has no val images to evaluate on; ingest them: polysem ingest DATA_DIR --split val")


def test_a_store_of_format_6_reads_as_it_is_and_takes_a_second_layer(cli, tmp_path):
    """tests/fixtures/format6: one layer, its rows in samples/<split>/. Reading writes nothing; an ingest of a
    second layer migrates the catalog and compaction moves the old rows into the first layer's folder."""
    fixture = ROOT / "tests" / "fixtures" / "format6"
    store = tmp_path / "store"
    shutil.copytree(fixture / "store", store)
    before = snapshot(store)
    screened = cli("screen", "--store", store, "--format", "json")
    assert screened.exit_code == 0, screened.output
    pairs = json.loads(screened.stdout)
    assert [(p["channel"], p["class1"], p["class2"]) for p in pairs] == [(0, 1, 2)]
    assert snapshot(store) == before
    data = tmp_path / "data"
    shutil.copytree(ROOT / "tests" / "fixtures" / "format2" / "data", data)
    with duckdb.connect(str(store / "catalog.duckdb")) as con:  # as if made here: its images in `data`
        for split in ("train", "val"):
            con.execute("UPDATE store_meta SET value = ?::JSON WHERE key = ?",
                        [json.dumps(str(data / split)), f"dataset_root:{split}"])
    for split in ("train", "val"):  # the code recorded is another checkout's: trusted by name, from this one
        result = polysem.ingest(Store(store, trust_code=ROOT), data, split, layer="stem.0", progress=False)
        assert result.n_written == (18 if split == "train" else 12)
    assert [p.parent.name for p in store.glob("samples/*/*.parquet")] == ["_schema"]  # compaction moved the rows
    assert {p.parent.name for p in store.glob("samples/*/*/*.parquet")} == {"layer=probe", "layer=stem.0"}
    old = Store(store, layer="probe")
    assert old.sql("SELECT count(*) AS n FROM layer_samples").column("n")[0].as_py() == 30
    assert polysem.screen(old).to_pylist()[0]["channel"] == 0
    assert Store(store, layer="probe").sql("SELECT layer FROM runs").column("layer").to_pylist() == ["probe"]


def test_check_and_compact_take_every_layer(cli, stores, tmp_path):
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    checked = cli("check", "--store", store)
    assert checked.exit_code == 0 and "ok:" in checked.output, checked.output
    assert cli("check", "--store", store, "--layer", FC2).exit_code == 0
    assert_refused(cli("check", "--store", store, "--layer", "block.fc9"),
                   "the store holds no layer 'block.fc9'; its layers: block.fc1, block.fc2")
    assert cli("compact", "--store", store).exit_code == 0
    (store / f"layer_weights-{FC2}.parquet").write_bytes(b"")  # the second layer's weight, damaged
    assert cli("check", "--store", store).exit_code == 2


@pytest.mark.parametrize("name", ["../../outside", "a/b", ".hidden", ""])
def test_a_received_store_naming_a_layer_no_folder_can_have_is_refused(cli, stores, tmp_path, name):
    """A layer's name names its folders and files: a catalog naming one outside the store is refused by every
    command before anything is read or written."""
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("INSERT INTO store_meta VALUES (?, '{\"out_channels\": 3}'::JSON)", [f"layer_shape:{name}"])
    before = snapshot(tmp_path)
    for args in (["info"], ["screen", "--layer", FC1], ["compact"]):
        assert_refused(cli(*args, "--store", store), "not a name polysem writes")
    assert snapshot(tmp_path) == before


def test_a_layer_an_ingest_left_unfinished_is_named_by_the_next_ingest_and_by_check(cli, images, stores, tmp_path):
    """fc1 holds only some of train's images (an ingest stopped); adding fc2 stores all of them, and both the
    ingest and `check` say which layer is short and how to complete it."""
    import pyarrow.parquet as pq

    store = tmp_path / "short"
    shutil.copytree(stores / "fc1", store)
    [part] = store.glob(f"samples/train/layer={FC1}/*.parquet")
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 6), part)  # 6 of the 15 images kept, as a stopped ingest leaves them
    summary = polysem.ingest(store, images, "train", layer=FC2, **MODEL)
    assert summary.n_written == 15
    assert summary.warnings == [f"layer {FC1} holds 6 of split 'train''s 15 images (an ingest stopped before it "
                                f"finished): run `polysem ingest DATA_DIR --split train --layer {FC1}` to complete it"]
    checked = cli("check", "--store", store)
    assert checked.exit_code == 2 and f"layer {FC1} holds 6 of split 'train''s 15 images" in checked.output
    polysem.ingest(store, images, "train", layer=FC1, **MODEL)  # completes it
    assert f"layer {FC2} holds 0 of split 'val''s 9 images" in cli("check", "--store", store).output
    polysem.ingest(store, images, "val", **MODEL)  # every layer the store holds: fc2's val images
    completed = cli("check", "--store", store)
    assert completed.exit_code == 0, completed.output


def test_stray_layer_folders_and_weights_are_named_by_check(cli, stores, tmp_path):
    store = tmp_path / "stray"
    shutil.copytree(stores / "fc1", store)
    [part] = store.glob(f"samples/train/layer={FC1}/*.parquet")
    (store / "samples" / "train" / "layer=evil").mkdir()
    shutil.copyfile(part, store / "samples" / "train" / "layer=evil" / part.name)
    shutil.copyfile(store / "layer_weights.parquet", store / "layer_weights-ghost.parquet")
    checked = cli("check", "--store", store)
    assert checked.exit_code == 2
    assert "layer=evil holds rows of a layer the store does not record" in checked.output
    assert "layer_weights-ghost.parquet is the weight of a layer the store does not record" in checked.output


@pytest.mark.parametrize("shape", ['"bogus"', '{"out_channels": 3}', '{"out_channels": 3, "in_channels": -1}'])
def test_a_layer_shape_polysem_never_writes_is_refused_in_one_line(cli, stores, tmp_path, shape):
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE store_meta SET value = ?::JSON WHERE key = ?", [shape, f"layer_shape:{FC2}"])
    before = snapshot(store)
    for args in (["info"], ["screen", "--layer", FC2]):
        assert_refused(cli(*args, "--store", store), f"layer_shape:{FC2}", "not a layer's shape")
    assert snapshot(store) == before


def test_a_layer_shape_that_contradicts_its_weight_is_refused_by_the_screening(cli, stores, tmp_path):
    store = tmp_path / "both"
    shutil.copytree(stores / "both", store)
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE store_meta SET value = json_merge_patch(value, '{\"out_channels\": 99}') WHERE key = ?",
                    [f"layer_shape:{FC2}"])
    assert_refused(cli("screen", "--store", store, "--layer", FC2), f"layer_weights-{FC2}.parquet holds 3 channels",
                   "records 99")


def test_compacting_a_store_of_format_6_migrates_its_catalog_first(cli, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(ROOT / "tests" / "fixtures" / "format6" / "store", store)
    assert cli("compact", "--store", store).exit_code == 0
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        version = con.execute("SELECT value ->> '$' FROM store_meta WHERE key = 'schema_version'").fetchone()[0]
        layers = con.execute("SELECT DISTINCT layer FROM runs").fetchall()
    assert version == "7" and layers == [("probe",)]
    assert [p.parent.name for p in store.glob("samples/*/*/*.parquet")] == ["layer=probe"] * 2
