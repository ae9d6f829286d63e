"""A map-style torch Dataset in place of an image folder and an nn.Module in place of a model name
(ingest/objects.py): one row per index with the folder's attributions, resumed by index; the refusals, each one
line with nothing written; and disentangle, verify and evaluate in the API on the colour known answer, in a
process that gives the objects again with `polysem.use`."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
from torchvision import transforms

import polysem
from polysem.errors import ArgumentError, ArgumentRange, DataError, ObjectsNeeded, StoreMismatch
from polysem.ingest import objects
from polysem.ingest.models import state_dict_sha256
from polysem.query import Store
from tests.helpers import COLOURS, assert_refused, make_colour_images, make_image_folder, snapshot
from tests.models import ColourNet, small, tiny_net

TINY_OBJECT = {"layer": "probe", "progress": False}


class Files(Dataset):
    """The images of an ImageFolder split through `tests.models.small`, in the folder listing's order, with the
    folders as `classes`: the items a folder ingest reads."""

    stop_at = None  # an index at which loading is interrupted, as Ctrl-C would

    def __init__(self, split_dir, n=None):
        self.classes = sorted(p.name for p in split_dir.iterdir())
        self.files = [(path, label) for label, name in enumerate(self.classes)
                      for path in sorted((split_dir / name).iterdir())][:n]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        if index == self.stop_at:
            raise KeyboardInterrupt
        path, label = self.files[index]
        return small(Image.open(path).convert("RGB")), label


class Bare(Dataset):
    """Random 3 x 16 x 16 tensors and labels, no `classes`; `item` chooses what an index gives."""

    def __init__(self, n=6, item=None):
        generator = torch.Generator().manual_seed(7)
        self.images = torch.rand(n, 3, 16, 16, generator=generator)
        self.item = item or (lambda image, index: (image, index % 3))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.item(self.images[index], index)


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.rand(3, 16, 16), 0


class Colours(Dataset):
    """The solid-colour images of tests.helpers.make_colour_images as tensors: the same pixels, by the same
    generator, without files."""

    classes = list(COLOURS)

    def __init__(self, per_class, seed, size=8, noise=12, transform=None):
        rng = np.random.default_rng(seed)
        self.transform = transform
        self.items = []
        for label, rgb in enumerate(COLOURS.values()):
            for _ in range(per_class):
                pixels = np.clip(np.array(rgb) + rng.integers(0, noise, size=(size, size, 3)), 0, 255).astype(np.uint8)
                self.items.append((pixels, label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        pixels, label = self.items[index]
        return (self.transform or transforms.ToTensor())(pixels), label


def rows(store, columns="image_id, path, target, attribution, input_sum, target_logit"):
    return Store(store).sql(f"SELECT {columns} FROM samples ORDER BY image_id").to_pylist()


def test_a_dataset_and_a_model_object_give_one_row_per_index_with_the_folders_attributions(tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 4, "b": 3, "c": 3}, seed=2)
    folder = tmp_path / "folder"
    polysem.ingest(folder, data, model="tests.models:tiny_net", transform="tests.models:small", **TINY_OBJECT)
    dataset, net = Files(data / "train"), tiny_net().train()
    store = tmp_path / "objects"
    summary = polysem.ingest(store, dataset, model=net, **TINY_OBJECT)
    assert (summary.n_written, summary.n_already, summary.n_errors) == (10, 0, 0)

    got = rows(store)
    assert [r["image_id"] for r in got] == list(range(10))
    assert [r["path"] for r in got] == [f"train[{i}]" for i in range(10)]
    assert [r["target"] for r in got] == [label for _, label in dataset.files]
    by_path = {r["path"]: r for r in Store(folder).sql("SELECT * FROM samples").to_pylist()}
    for row, (path, _) in zip(got, dataset.files, strict=True):
        expected = by_path[str(path)]
        assert row["target"] == expected["target"]
        np.testing.assert_allclose(row["attribution"], expected["attribution"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(row["input_sum"], expected["input_sum"], rtol=1e-5, atol=1e-6)
        assert row["target_logit"] == pytest.approx(expected["target_logit"], rel=1e-5)

    meta = Store(store).meta()
    assert (meta["model"], meta["weights"], meta["transform"]) == ("object:tests.models.TinyNet", "object", "dataset")
    assert meta["weights_sha256"] == state_dict_sha256(tiny_net())
    assert meta["dataset_roots"] == {"train": "dataset:tests.test_dataset_objects.Files of 10 items"}
    assert Store(store).sql("SELECT class_id, name, logit FROM classes").to_pylist() == [
        {"class_id": i, "name": name, "logit": i} for i, name in enumerate("abc")]
    assert net.training and all(p.requires_grad for p in net.parameters())  # polysem changed only its copy

    with pytest.raises(StoreMismatch, match="`normalize` shows a Dataset's items; this store's images are files"):
        polysem.use(folder, normalize=([0.5] * 3, [0.2] * 3))
    with pytest.raises(StoreMismatch, match="the store's model is tests.models:tiny_net, which it builds itself"):
        polysem.use(folder, model=net)

    again = polysem.ingest(store, dataset, model=net, progress=False)  # a second ingest resumes: nothing to do
    assert (again.n_written, again.n_already) == (0, 10)
    assert len(rows(store, "image_id")) == 10


def test_an_interrupted_ingest_resumes_by_index(tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 5, "b": 5, "c": 4}, seed=2)
    dataset, store = Files(data / "train"), tmp_path / "s"
    dataset.stop_at = 11  # after the items the probe reads (the first 8)
    with pytest.raises(KeyboardInterrupt, match="run the same command again to resume"):
        polysem.ingest(store, dataset, model=tiny_net(), batch_size=2, rows_per_part=2, **TINY_OBJECT)
    stored = [r["image_id"] for r in rows(store, "image_id")]
    assert stored == list(range(10))  # the whole batches before the interrupted one
    dataset.stop_at = None
    summary = polysem.ingest(store, dataset, model=tiny_net(), batch_size=2, progress=False)
    assert (summary.n_already, summary.n_written) == (10, 4)
    assert [r["image_id"] for r in rows(store, "image_id")] == list(range(14))  # each index once


def test_classes_without_names_are_the_models_outputs_by_number(tmp_path):
    polysem.ingest(tmp_path / "s", Bare(), model=tiny_net(), **TINY_OBJECT)
    store = Store(tmp_path / "s")
    assert store.sql("SELECT folder, name, logit FROM classes").to_pylist() == [
        {"folder": str(i), "name": str(i), "logit": i} for i in range(3)]  # tiny_net has 3 outputs
    assert [r["target"] for r in rows(tmp_path / "s", "target")] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("data, error, fragments", [
    (Stream(), ArgumentError, ["`data` must be a map-style Dataset", "IterableDataset tests.test_dataset_objects.Stream"]),
    (Bare(item=lambda image, i: (image, "cat")), DataError, ["item 0 is (tensor 3 x 16 x 16, str)"]),
    (Bare(item=lambda image, i: (image[0], 0)), DataError, ["item 0 is (tensor 16 x 16, int)"]),
    (Bare(item=lambda image, i: image), DataError, ["item 0 is tensor 3 x 16 x 16"]),
    (Bare(item=lambda image, i: (image, 0.0 if i == 3 else 0)), DataError, ["item 3 is (tensor 3 x 16 x 16, float)"]),
    (Bare(item=lambda image, i: (image, 5)), DataError, ["item 0 of `data` has label 5", "classes are 0 to 2"]),
], ids=["iterable", "text label", "no channel axis", "no pair", "a later item", "label out of range"])
def test_data_that_is_no_map_style_dataset_of_pairs_is_refused_before_anything_is_written(tmp_path, data, error,
                                                                                           fragments):
    with pytest.raises(error) as raised:
        polysem.ingest(tmp_path / "s", data, model=tiny_net(), **TINY_OBJECT)
    message = str(raised.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("transform", [transforms.Compose([transforms.ToTensor()]), small],
                         ids=["a Compose", "a function"])
def test_a_transform_object_is_refused_with_the_form_the_store_records(tmp_path, transform):
    folder = make_image_folder(tmp_path / "data", "train", {"cat": 1, "dog": 1})
    with pytest.raises(ArgumentError) as raised:
        polysem.ingest(tmp_path / "s", folder, model=tiny_net(), layer="probe", transform=transform)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("`transform` must be the text MODULE:NAME of a callable")
    assert f"got {type(transform).__name__} " in message and 'pass "module:name"' in message
    assert not (tmp_path / "s").exists()


def test_another_length_or_other_weights_on_a_later_call_are_refused(tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 4, "b": 3, "c": 3}, seed=2)
    store = tmp_path / "s"
    net = tiny_net()
    polysem.ingest(store, Files(data / "train"), model=net, **TINY_OBJECT)
    before = snapshot(store)
    other = tiny_net()
    with torch.no_grad():
        other.probe.weight.add_(0.01)
    calls = [
        (lambda: polysem.ingest(store, Files(data / "train", n=8), model=net, progress=False), DataError,
         "ingested from a Dataset of 10 items (dataset:tests.test_dataset_objects.Files of 10 items), not of 8"),
        (lambda: polysem.ingest(store, Files(data / "train"), model=other, progress=False), StoreMismatch,
         "holds attributions of other weights"),
        (lambda: polysem.ingest(store, Files(data / "train"), model=torch.nn.Linear(2, 2), progress=False),
         StoreMismatch, "the store holds `model`=object:tests.models.TinyNet, not object:torch.nn.modules"),
        (lambda: polysem.ingest(store, data, progress=False), StoreMismatch, "the store's splits come from Datasets"),
        (lambda: polysem.use(store, data={"train": Files(data / "train", n=8)}), StoreMismatch, "not of 8"),
        (lambda: polysem.use(store, model=other), StoreMismatch, "`model` has other weights than the store's"),
        (lambda: polysem.use(store, data={"val": Files(data / "train")}), StoreMismatch, "no split 'val'"),
        (lambda: polysem.ingest(store, Files(data / "train"), model=net, weights="random", progress=False),
         ArgumentRange, "`weights` must be None with a model object"),
        (lambda: polysem.ingest(store, Files(data / "train"), transform="tests.models:small", progress=False),
         ArgumentRange, "`transform` must be None for a Dataset"),
    ]
    for call, error, fragment in calls:
        with pytest.raises(error) as raised:
            call()
        assert fragment in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert snapshot(store) == before


def test_a_dataset_defined_in_main_takes_no_forkserver_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(Bare, "__module__", "__main__")
    with pytest.raises(ValueError, match="`num_workers` must be 0 for a Dataset defined in __main__"):
        polysem.ingest(tmp_path / "s", Bare(), model=tiny_net(), num_workers=1, **TINY_OBJECT)
    assert not (tmp_path / "s").exists()
    summary = polysem.ingest(tmp_path / "s", Bare(), model=tiny_net(), **TINY_OBJECT)  # no workers unless asked
    assert summary.n_written == 6


def test_the_command_line_names_the_python_calls_for_an_object_store(cli, tmp_path, monkeypatch):
    polysem.ingest(tmp_path / "s", Bare(), model=tiny_net(), **TINY_OBJECT)
    make_image_folder(tmp_path / "data", "train", {"a": 2, "b": 2, "c": 2})
    monkeypatch.setattr(objects, "_GIVEN", {})  # the command line's own process: no objects
    before = snapshot(tmp_path / "s")
    assert_refused(cli("visualize", "--channel", 0, "--steps", 1, "--size", 8, "--store", tmp_path / "s"),
                   "the store's model is a Python object (object:tests.models.TinyNet)",
                   "the command line cannot give", "polysem.use(store, model=<that model>)", "polysem.visualize(")
    assert_refused(cli("ingest", tmp_path / "data", "--store", tmp_path / "s"),
                   "the store's splits come from Datasets")
    assert snapshot(tmp_path / "s") == before
    info = cli("info", "--store", tmp_path / "s")
    assert info.exit_code == 0 and "object:tests.models.TinyNet is a Python object" in info.stdout, info.output


def test_disentangle_verify_and_evaluate_in_the_api_on_a_dataset_and_a_model_object(tmp_path, monkeypatch):
    net, train, val = ColourNet(), Colours(6, seed=0), Colours(4, seed=1)
    store = tmp_path / "s"
    polysem.ingest(store, train, "train", model=net, **TINY_OBJECT)
    polysem.ingest(store, val, "val", model=net, progress=False)
    monkeypatch.setattr(objects, "_GIVEN", {})  # a process that did not ingest, e.g. the notebook run again
    with pytest.raises(ObjectsNeeded, match=r"call polysem.use\(store, model=<that model>\)"):
        polysem.disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    polysem.use(store, model=net)
    with pytest.raises(ObjectsNeeded, match=r"split 'train' of the store comes from a Dataset .*data=\{'train'"):
        polysem.disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    polysem.use(store, data={"train": train, "val": val})

    run = polysem.disentangle(store, 0, concept1=["green"], concept2=["red"], progress=False)
    assert (run.sources1, run.sources2, run.shared) == ([1], [0], [2])  # G detector / R detector / B
    assert run.max_logit_diff < 1e-5
    checked = polysem.verify(store, run.run_id, progress=False)
    assert checked.resolved and [(c.unit, c.relevant_classes) for c in checked.channels] == [("c1", [1]), ("c2", [2])]
    result = polysem.evaluate(store, run.run_id, plots_dir=tmp_path / "plots", progress=False)
    green, red = result.per_concept
    assert (green.n_images, red.n_images) == (4, 4)
    assert green.fractions[0] > 0.95 and red.fractions[1] > 0.95 and abs(green.frac_residual) < 1e-6
    assert len(list((tmp_path / "plots").iterdir())) == 6  # density, panel, three top-image rows, the whole picture

    # the same pixels as files (make_colour_images: the same generator) give the same numbers
    folder = make_colour_images(tmp_path / "images", "train", 6, seed=0)
    make_colour_images(folder, "val", 4, seed=1)
    files = tmp_path / "files"
    for split in ("train", "val"):
        polysem.ingest(files, folder, split, model="tests.models:colour_net", layer="probe",
                       transform="tests.models:to_tensor", progress=False)
    from_files = polysem.disentangle(files, 0, concept1=["green"], concept2=["red"], progress=False)
    # every rho of the grid ties on this known answer (to float rounding, which the order of the images decides)
    assert (from_files.sources, from_files.shared) == (run.sources, run.shared)
    evaluated = polysem.evaluate(files, from_files.run_id, progress=False)
    for mine, theirs in zip(result.per_concept, evaluated.per_concept, strict=True):
        assert mine.fractions == pytest.approx(theirs.fractions, abs=1e-6)


def test_figures_undo_the_datasets_normalize_or_the_one_given(tmp_path):
    from polysem.ingest.objects import DatasetSource, item_photo

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dataset = Colours(1, seed=0, transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]))
    image, _ = dataset[2]
    source = DatasetSource(lambda split: dataset)
    photo, note = item_photo(image, source.normalization("val"))
    np.testing.assert_array_equal(photo, dataset.items[2][0])  # the pixels the Dataset started from
    assert "Normalize undone" in note
    given = DatasetSource(lambda split: dataset, transforms.Normalize((0.0,) * 3, (1.0,) * 3))
    assert list(given.normalization("val").mean) == [0.0] * 3  # polysem.use(normalize=) wins over the Dataset's
    photo, note = item_photo(torch.full((1, 2, 2), 2.0), None)
    assert photo.shape == (2, 2) and (photo == 255).all() and "no Normalize" in note
