"""Interrupted ingests resume to the same rows; torchrun ranks split the work into the same rows (a refusal under
torchrun, and ranks killed or waiting: tests/test_ranks.py)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from polysem.query import Store

from tests.helpers import ROOT, TINY, kill_when_parts, make_image_folder
from tests.zygote import polysem_process

SLOW = ["--model", "tests.models:tiny_net", "--layer", "probe", "--transform", "tests.models:slow"]


def polysem(*args):
    """`python -m polysem.cli ARGS` in a process of its own (forked from the worker's zygote: tests/zygote.py)."""
    return polysem_process(*args, env={**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": str(ROOT)})


def rows(store_path):
    return Store(store_path).sql("SELECT * EXCLUDE (split) FROM samples ORDER BY image_id").to_pylist()


def assert_same_rows(a, b):
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    for x, y in zip(a, b):
        assert (x["path"], x["target"], x["prediction"], x["positions"]) == (y["path"], y["target"], y["prediction"], y["positions"])
        np.testing.assert_allclose(x["attribution"], y["attribution"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x["input_sum"], y["input_sum"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x["target_logit"], y["target_logit"], rtol=1e-5, atol=1e-6)


@pytest.fixture
def many_images(tmp_path):
    return make_image_folder(tmp_path / "data", "train", {"a": 12, "b": 12, "c": 12})


def test_kill_and_resume_gives_identical_rows(many_images, tmp_path, cli, monkeypatch):
    """Killed (SIGKILL) in its own process; the same command resumes it, in this process."""
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    args = ["ingest", many_images, *SLOW, "--batch-size", 2, "--rows-per-part", 4]
    kill_when_parts(polysem(*args, "--store", killed), killed / "samples" / "train")
    stored = len(rows(killed))
    assert 8 <= stored < 36, "the run must be killed mid-way"
    without_slowdown(monkeypatch)
    resumed = cli(*args, "--store", killed)
    assert resumed.exit_code == 0, resumed.output
    assert f"{36 - stored} images stored, {stored} already there" in resumed.output
    # the same model and images without the slowdown, in this process: the rows an unbroken ingest gives
    from polysem.ingest import ingest

    ingest(reference, many_images, model="tests.models:tiny_net", layer="probe", transform="tests.models:small",
           batch_size=2, progress=False)
    assert_same_rows(rows(killed), rows(reference))


def without_slowdown(monkeypatch) -> None:
    """tests.models' slow transform and model, at full speed in this process: the slowdown is there only so
    that another process can be stopped mid-way."""
    import tests.models

    monkeypatch.setattr(tests.models, "time", SimpleNamespace(sleep=lambda seconds: None))


def test_torchrun_two_processes_gives_identical_rows(many_images, tmp_path):
    single, ranked = tmp_path / "single", tmp_path / "ranked"
    args = ["ingest", many_images, *TINY, "--batch-size", 5, "--device", "cpu"]
    from polysem.ingest import ingest

    ingest(single, many_images, model="tests.models:tiny_net", layer="probe", transform="tests.models:small",
           batch_size=5, device="cpu", progress=False)
    env = {**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "polysem.cli", *map(str, args), "--store", str(ranked)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert launch.returncode == 0, launch.stdout + launch.stderr
    # each rank wrote its own parts, then rank 0 compacted them: class-ordered, one class per row group
    files = list((ranked / "samples" / "train").rglob("*.parquet"))
    assert [f.name[:8] for f in files] == ["compact-"]
    order = pq.read_table(files[0], columns=["target", "image_id"]).to_pylist()
    assert order == sorted(order, key=lambda r: (r["target"], r["image_id"]))
    meta = pq.ParquetFile(files[0]).metadata
    column = meta.schema.names.index("target")
    assert [(meta.row_group(g).column(column).statistics.min, meta.row_group(g).column(column).statistics.max)
            for g in range(meta.num_row_groups)] == [(0, 0), (1, 1), (2, 2)]
    assert_same_rows(rows(ranked), rows(single))


def test_ctrl_c_keeps_finished_rows_and_says_how_to_resume(tmp_path, cli, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt) at the fourth batch: the three batches attributed before it are in memory,
    none flushed yet (a part holds 100 rows); they are stored, and the same command resumes."""
    from polysem.ingest import pipeline

    images = make_image_folder(tmp_path / "data", "train", {"a": 16, "b": 16, "c": 16})
    store = tmp_path / "s"
    args = ["ingest", images, *SLOW, "--batch-size", 2, "--rows-per-part", 100, "--store", store]
    without_slowdown(monkeypatch)
    calls, attribute_layers = [], pipeline.attribute_layers

    def interrupting(*batch):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return attribute_layers(*batch)

    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "attribute_layers", interrupting)
        result = cli(*args)
    assert result.exit_code == 130, result.output
    assert "Interrupted" in result.output and "run the same command again to resume" in result.output
    kept = len(rows(store))
    assert 4 <= kept < 48  # the rows in memory were flushed, not lost (a part holds 100)
    resumed = cli(*args)
    assert resumed.exit_code == 0 and f"{48 - kept} images stored, {kept} already there" in resumed.output


def test_two_ingests_of_one_split_are_refused(many_images, tmp_path, cli):
    import fcntl

    store = tmp_path / "s"
    assert cli("ingest", many_images, "--store", store, *TINY, "--classes", "0").exit_code == 0
    with open(store / "samples" / ".train.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = cli("ingest", many_images, "--store", store)
    assert result.exit_code == 2 and "another ingest of split 'train'" in result.output
    assert len(rows(store)) == 12
