"""Ingest's CPU defaults: workers and torch threads share the cores; threads are restored."""

import torch
from polysem.ingest import pipeline
from polysem.ingest.threads import default_num_workers, default_threads

from tests.helpers import TINY, make_image_folder


def test_defaults_split_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [default_num_workers(c) for c in (1, 2, 4, 16, 64)] == [0, 0, 2, 8, 8]
    assert default_threads(cpu, 0, cores=2) == 2 and default_threads(cpu, 8, cores=16) == 8
    assert default_threads(cpu, 4, cores=2) == 1  # never 0
    assert default_threads(cuda, 0, cores=16) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(cpu, 0, cores=16) is None  # the user's setting wins


def test_ingest_sets_threads_for_the_run_and_restores_them(tmp_path, monkeypatch):
    from polysem.ingest import ingest

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    root = make_image_folder(tmp_path / "d", "train", {"a": 2, "b": 2, "c": 1})
    seen, real_run = [], pipeline.run_batches
    monkeypatch.setattr(pipeline, "run_batches", lambda *a: (seen.append(torch.get_num_threads()), real_run(*a)))
    before = torch.get_num_threads()
    model, layer, transform = TINY[1], TINY[3], TINY[5]
    ingest(tmp_path / "s", root, model=model, layer=layer, transform=transform, device="cpu", threads=1,
           progress=False)
    assert seen == [1] and torch.get_num_threads() == before
