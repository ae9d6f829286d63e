"""Ingest through the CLI: what lands in the store, resume, and every bad input."""

import json
import os

from polysem.query import Store

from tests.helpers import TINY, assert_refused, snapshot


def ingest(cli, data_dir, store_path, *extra, split="train"):
    return cli("ingest", data_dir, "--split", split, "--store", store_path, "--batch-size", 3, *extra)


def test_ingest_writes_samples_classes_weights_and_metadata(cli, data_dir, store_path):
    result = ingest(cli, data_dir, store_path, *TINY)
    assert result.exit_code == 0, result.output
    assert "10 images stored" in result.output
    store = Store(store_path)
    rows = store.sql("SELECT * FROM samples ORDER BY path").to_pylist()
    assert len(rows) == 10
    assert {r["split"] for r in rows} == {"train"}
    assert [r["target"] for r in rows] == [0] * 4 + [1] * 3 + [2] * 3
    assert all(len(r["attribution"]) == 5 and len(r["input_sum"]) == 6 * 9 for r in rows)
    assert all(r["positions"] == 8 * 8 for r in rows)
    assert len({r["image_id"] for r in rows}) == 10
    classes = store.sql("SELECT * FROM classes ORDER BY class_id").to_pylist()
    assert [c["folder"] for c in classes] == ["cat", "dog", "emu"]
    assert all(c["wnid"] is None for c in classes)
    weights = store.sql("SELECT * FROM layer_weights ORDER BY channel").to_pylist()
    assert len(weights) == 5 and len(weights[0]["weight"]) == 54 and weights[0]["bias"] is not None
    meta = store.meta()
    assert meta["model"] == "tests.models:tiny_net" and meta["layer"] == "probe"
    assert meta["layer_shape"] == {"out_channels": 5, "in_channels": 6, "kernel_size": [3, 3], "stride": [2, 2],
                                   "padding": [1, 1], "dilation": [1, 1], "bias": True}
    assert meta["dataset_roots"] == {"train": str(data_dir / "train")}
    assert len(meta["weights_sha256"]) == 64
    # the Parquet is readable without polysem
    parts = list((store_path / "samples" / "train").rglob("*.parquet"))
    import pyarrow.parquet as pq
    assert sum(pq.read_table(p).num_rows for p in parts) == 10


def test_rerun_resumes_and_never_duplicates(cli, data_dir, store_path):
    assert ingest(cli, data_dir, store_path, *TINY).exit_code == 0
    again = ingest(cli, data_dir, store_path)  # options come from the store
    assert again.exit_code == 0, again.output
    assert "0 images stored, 10 already there" in again.output
    n, distinct = Store(store_path).sql("SELECT count(*), count(DISTINCT image_id) FROM samples").to_pylist()[0].values()
    assert n == distinct == 10


def test_second_split_and_limit_and_classes(cli, data_dir, store_path):
    assert ingest(cli, data_dir, store_path, *TINY, "--limit", 2).exit_code == 0
    assert ingest(cli, data_dir, store_path, "--classes", "0,2", split="val").exit_code == 0
    counts = Store(store_path).sql("SELECT split, target, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL").to_pylist()
    assert counts == [
        {"split": "train", "target": 0, "n": 2}, {"split": "train", "target": 1, "n": 2}, {"split": "train", "target": 2, "n": 2},
        {"split": "val", "target": 0, "n": 2}, {"split": "val", "target": 2, "n": 2},
    ]


def test_corrupt_image_is_recorded_not_fatal(cli, data_dir, store_path):
    bad = data_dir / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    result = ingest(cli, data_dir, store_path, *TINY)
    assert result.exit_code == 0, result.output
    assert "1 unreadable" in result.output
    errors = Store(store_path).sql("SELECT path, error FROM ingest_errors").to_pylist()
    assert len(errors) == 1 and errors[0]["path"] == str(bad) and "UnidentifiedImageError" in errors[0]["error"]
    assert Store(store_path).sql("SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 10}]
    # a rerun tries it again (it may have been repaired) and lists it once
    again = ingest(cli, data_dir, store_path)
    assert again.exit_code == 0 and "0 images stored, 10 already there, 1 unreadable" in again.output
    assert Store(store_path).sql("SELECT count(*) AS n FROM ingest_errors").to_pylist() == [{"n": 1}]
    # repaired, the next ingest stores it and it leaves ingest_errors
    from PIL import Image
    Image.new("RGB", (20, 20), (9, 9, 9)).save(bad, format="PNG")
    assert "1 images stored, 10 already there, 0 unreadable" in ingest(cli, data_dir, store_path).output
    assert Store(store_path).sql("SELECT count(*) AS n FROM ingest_errors").to_pylist() == [{"n": 0}]


def test_empty_class_folder_is_kept(cli, data_dir, store_path):
    for image in (data_dir / "train" / "emu").iterdir():
        image.unlink()
    assert ingest(cli, data_dir, store_path, *TINY).exit_code == 0
    classes = Store(store_path).sql("SELECT folder FROM classes ORDER BY class_id").column("folder").to_pylist()
    assert classes == ["cat", "dog", "emu"]


def test_classes_json_and_imagenet_names(cli, tmp_path, store_path):
    from tests.helpers import make_image_folder

    root = make_image_folder(tmp_path / "imnet", "train", {"n01440764": 1, "tabby": 1})
    (root / "classes.json").write_text(json.dumps({"n01440764": {"logit": 0},
                                                   "tabby": {"name": "tabby cat", "wnid": "n02123045", "logit": 2}}))
    assert ingest(cli, root, store_path, *TINY).exit_code == 0
    rows = Store(store_path).sql("SELECT folder, name, wnid FROM classes ORDER BY class_id").to_pylist()
    assert rows == [{"folder": "n01440764", "name": "tench", "wnid": "n01440764"},
                    {"folder": "tabby", "name": "tabby cat", "wnid": "n02123045"}]


def test_info_and_classes_commands(cli, data_dir, store_path):
    ingest(cli, data_dir, store_path, *TINY)
    info = cli("info", "--store", store_path, "--format", "json")
    assert info.exit_code == 0
    details = json.loads(info.output)
    assert details["splits"] == {"train": {"images": 10, "unreadable": 0, "classes": 3}}
    assert details["classes"] == 3 and details["size_bytes"] > 0
    text = cli("info", "--store", store_path)
    assert "probe" in text.output and "train: 10 images in 3 classes" in text.output
    classes = cli("classes", "--store", store_path, "--format", "csv")
    # one count per split the store holds: only train was ingested
    assert classes.output.splitlines() == ["class_id,folder,name,wnid,logit,n_train", "0,cat,cat,,0,4",
                                           "1,dog,dog,,1,3", "2,emu,emu,,2,3"]


# -- bad input: one line, exit code 2, nothing written -------------------------------------------

def test_missing_data_dir(cli, tmp_path, store_path):
    assert_refused(ingest(cli, tmp_path / "nope", store_path, *TINY), "does not exist")
    (tmp_path / "afile").write_text("")
    assert_refused(ingest(cli, tmp_path / "afile", store_path, *TINY), f"data folder {tmp_path / 'afile'} is not a folder")
    assert not store_path.exists()


def test_missing_split(cli, data_dir, store_path):
    assert_refused(ingest(cli, data_dir, store_path, *TINY, split="test"), "split folder", "test", "train, val")
    assert not store_path.exists()


def test_split_without_images(cli, tmp_path, store_path):
    (tmp_path / "d" / "train" / "cat").mkdir(parents=True)
    assert_refused(ingest(cli, tmp_path / "d", store_path, *TINY), "holds no images")
    assert not store_path.exists()


def test_unknown_model(cli, data_dir, store_path):
    assert_refused(ingest(cli, data_dir, store_path, "--model", "resnet5O"), "unknown model 'resnet5O'", "resnet50")
    assert not store_path.exists()


def test_model_import_fails(cli, data_dir, store_path):
    assert_refused(ingest(cli, data_dir, store_path, "--model", "nowhere.models:net"), "cannot import nowhere.models")
    assert_refused(ingest(cli, data_dir, store_path, "--model", "tests.models:not_a_module"), "not a torch.nn.Module")
    assert not store_path.exists()


def test_weights_file_missing(cli, data_dir, store_path, tmp_path):
    args = ["--model", "tests.models:tiny_net", "--layer", "probe", "--weights", tmp_path / "w.pt"]
    assert_refused(ingest(cli, data_dir, store_path, *args), "w.pt not found")
    os.mkfifo(tmp_path / "fifo")  # never opened: a read would wait for a writer
    args[-1] = tmp_path / "fifo"
    assert_refused(ingest(cli, data_dir, store_path, *args), f"weights file {tmp_path / 'fifo'} is not a regular file")
    assert not store_path.exists()


def test_weights_not_matching_model(cli, data_dir, store_path, tmp_path):
    import torch

    from tests.models import tiny_net

    state = tiny_net().state_dict()
    state["extra.weight"] = state.pop("probe.weight")
    torch.save(state, tmp_path / "w.pt")
    args = ["--model", "tests.models:tiny_net", "--layer", "probe", "--weights", tmp_path / "w.pt"]
    assert_refused(ingest(cli, data_dir, store_path, *args), "does not match", "missing keys probe.weight",
                   "unexpected keys extra.weight")
    assert not store_path.exists()


def test_imagenet_weights_absent_offline(cli, data_dir, store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert_refused(ingest(cli, data_dir, store_path, "--model", "resnet18", "--weights", "imagenet"),
                   "resnet18-f37072fd.pth", str(tmp_path / "torch" / "hub" / "checkpoints"), "--weights PATH")


def test_layer_not_found_lists_close_conv_layers(cli, data_dir, store_path):
    result = ingest(cli, data_dir, store_path, "--model", "tests.models:tiny_net", "--layer", "prob")
    assert_refused(result, "layer 'prob' not found", "probe", "(`polysem layers` lists them all)")


def test_a_model_given_as_a_file_path_is_told_the_module_form(cli, data_dir, store_path, tmp_path):
    (tmp_path / "nets.py").write_text("")
    for spec in (f"{tmp_path / 'nets.py'}:build", "code/nets:build"):
        assert_refused(ingest(cli, data_dir, store_path, "--model", spec, "--layer", "probe"),
                       f"bad model '{spec}': name a module as Python imports it, not a file path: nets:build")
    assert not store_path.exists()


def test_layer_neither_a_conv_nor_a_linear_over_positions(cli, data_dir, store_path):
    result = ingest(cli, data_dir, store_path, "--model", "tests.models:tiny_net", "--layer", "head.1")
    assert_refused(result, "'head.1' is a AdaptiveAvgPool2d, neither a Conv2d nor a Linear")
    result = ingest(cli, data_dir, store_path, "--model", "tests.models:tiny_net", "--layer", "head.3")
    assert_refused(result, "'head.3' is a Linear applied to the whole image's features", "no token or position axis")
    assert not store_path.exists()


def test_store_of_another_model_or_a_layer_the_model_lacks(cli, data_dir, store_path):
    assert ingest(cli, data_dir, store_path, *TINY).exit_code == 0
    before = sorted(p.stat().st_mtime_ns for p in store_path.rglob("*") if p.is_file())
    assert_refused(ingest(cli, data_dir, store_path, "--layer", "stem.9"), "layer 'stem.9' not found")
    assert_refused(ingest(cli, data_dir, store_path, "--model", "resnet18", "--weights", "random"), "holds --model")
    after = sorted(p.stat().st_mtime_ns for p in store_path.rglob("*") if p.is_file())
    assert before == after


def test_store_of_other_weights(cli, data_dir, store_path, tmp_path):
    import torch

    from tests.models import tiny_net

    assert ingest(cli, data_dir, store_path, *TINY).exit_code == 0
    net = tiny_net()
    with torch.no_grad():
        net.probe.weight.add_(1.0)
    torch.save(net.state_dict(), tmp_path / "other.pt")
    assert_refused(ingest(cli, data_dir, store_path, "--weights", tmp_path / "other.pt", split="val"), "other weights")
    # the store's own weights file, overwritten since: named as changed, with both digests
    torch.save(tiny_net().state_dict(), tmp_path / "w.pt")
    kept = tmp_path / "kept"
    assert ingest(cli, data_dir, kept, *TINY, "--weights", tmp_path / "w.pt").exit_code == 0
    torch.save(net.state_dict(), tmp_path / "w.pt")
    before = snapshot(kept)
    for again in ([], ["--weights", tmp_path / "w.pt"]):
        assert_refused(ingest(cli, data_dir, kept, *again, split="val"),
                       f"the weights {tmp_path / 'w.pt'} have changed since store {kept} was ingested with them",
                       f"(sha256 {Store(kept).meta()['weights_sha256'][:12]} then, ", "restore that file")
    assert snapshot(kept) == before


def test_split_with_other_class_folders(cli, data_dir, store_path):
    assert ingest(cli, data_dir, store_path, *TINY).exit_code == 0
    (data_dir / "val" / "emu").rename(data_dir / "val" / "eel")
    assert_refused(ingest(cli, data_dir, store_path, split="val"), "differ from the store", "'emu'", "'eel'")


def test_store_directory_not_writable(cli, data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_refused(ingest(cli, data_dir, blocker / "store", *TINY), "not writable")


def test_bad_classes_option(cli, data_dir, store_path):
    assert_refused(ingest(cli, data_dir, store_path, *TINY, "--classes", "0,x"), "bad --classes")
    assert_refused(ingest(cli, data_dir, store_path, *TINY, "--classes", "7"), "out of range")


def test_imagenet_defaults_with_resnet50(cli, tmp_path, store_path):
    """The real-job path: default layer4.2.conv3 and resize-256/crop-224 preprocessing, wnid folders."""
    from tests.helpers import make_image_folder

    root = make_image_folder(tmp_path / "imagenet", "train", {"n01440764": 2, "n01443537": 1}, size=(300, 260))
    result = cli("ingest", root, "--model", "resnet50", "--weights", "random:3", "--store", store_path)
    assert result.exit_code == 0, result.output
    store = Store(store_path)
    row = store.sql("SELECT len(attribution) AS a, len(input_sum) AS s, positions FROM samples LIMIT 1").to_pylist()[0]
    assert row == {"a": 2048, "s": 512, "positions": 49}
    meta = store.meta()
    assert (meta["layer"], meta["transform"], meta["weights"]) == ("layer4.2.conv3", "imagenet", "random:3")
    assert store.sql("SELECT name FROM classes ORDER BY class_id").column("name").to_pylist() == ["tench", "goldfish"]
    assert "Warning" not in result.stderr  # a torchvision model: ImageNet's preprocessing is its own


def test_a_model_of_ones_own_without_a_transform_is_told_which_preprocessing_it_got(cli, data_dir, store_path):
    """The default transform is ImageNet's (resize 256, crop 224, normalise): right for torchvision's models, and a
    silent guess for one's own, which the first ingest names once; the store records it, so later ones say nothing."""
    first = ingest(cli, data_dir, store_path, "--model", "tests.models:tiny_net", "--layer", "probe")
    assert first.exit_code == 0, first.output
    (warning,) = [line for line in first.stderr.splitlines() if line.startswith("Warning:")]
    assert "resized to 256 pixels, center-cropped to 224" in warning and "--transform MODULE:NAME" in warning
    assert Store(store_path).meta()["transform"] == "imagenet"
    assert Store(store_path).sql("SELECT max(positions) AS p FROM samples").column("p")[0].as_py() == 112 * 112
    again = ingest(cli, data_dir, store_path, split="val")
    assert again.exit_code == 0 and "Warning" not in again.stderr
    given = ingest(cli, data_dir, store_path.with_name("given"), *TINY)
    assert given.exit_code == 0 and "Warning" not in given.stderr


def test_dataloader_workers_give_the_same_rows(cli, data_dir, tmp_path):
    (data_dir / "train" / "dog" / "broken.png").write_bytes(b"junk")
    for workers, store in ((0, tmp_path / "w0"), (2, tmp_path / "w2")):
        result = ingest(cli, data_dir, store, *TINY, "--num-workers", workers)
        assert result.exit_code == 0, result.output
    one, two = (Store(tmp_path / name).sql("SELECT * EXCLUDE (path) FROM samples ORDER BY image_id").to_pylist()
                for name in ("w0", "w2"))
    assert one == two and len(one) == 10
    assert Store(tmp_path / "w2").sql("SELECT count(*) AS n FROM ingest_errors").to_pylist() == [{"n": 1}]
