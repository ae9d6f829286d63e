"""The report page is meant to be shared: it names no folder of the machine it was made on (the store by its
name, a weights file by its file name) and stays self-contained (every image under its own folder)."""

import re

import torch

import polysem
from polysem.reporting import write_report
from tests.helpers import make_image_folder
from tests.models import tiny_net


def test_the_page_names_no_absolute_path(tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 4, "b": 4, "c": 4}, seed=3)
    make_image_folder(tmp_path / "data", "val", {"a": 3, "b": 3, "c": 3}, seed=4)
    weights = tmp_path / "weights" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(tiny_net().state_dict(), weights)
    store = tmp_path / "my-store"
    for split in ("train", "val"):
        polysem.ingest(store, data, split, model="tests.models:tiny_net", weights=str(weights), layer="probe",
                       transform="tests.models:small", progress=False)
    run = polysem.disentangle(store, 1, concept1=[0], concept2=[2], force=True, progress=False)
    polysem.evaluate(store, run.run_id, progress=False)
    index = write_report(store, tmp_path / "report")
    page = index.read_text()
    assert str(tmp_path) not in page and "/tmp/" not in page
    assert "polysem report: my-store" in page and ">tiny.pt<" in page
    for source in re.findall(r'src="([^"]+)"', page):
        assert not source.startswith("/") and (index.parent / source).is_file(), source
