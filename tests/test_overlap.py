"""Ingest overlaps loading, compute and writing: one batch in flight on the device, parts written
by a helper thread. The stored rows and parts are those of the serial loop, a failed write in the thread is
one `Error:` line with no half-written part, and an interrupted ingest keeps what was complete."""

import errno
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from polysem.ingest import ingest
from polysem.ingest import pipeline
from polysem.ingest.attribution import attribute_batch, attribute_layers
from polysem.ingest.dataset import list_split
from polysem.query import Store
from polysem.util import atomic

from tests.helpers import TINY, assert_refused_last_line, make_image_folder
from tests.models import small, tiny_net

TINY_API = {"model": "tests.models:tiny_net", "layer": "probe", "transform": "tests.models:small", "progress": False}
CORRUPT = ("a/004.png", "c/001.png")  # unreadable: listed in ingest_errors, not in a part


@pytest.fixture
def images(tmp_path):
    root = make_image_folder(tmp_path / "data", "train", {"a": 8, "b": 7, "c": 6})
    for name in CORRUPT:
        (root / "train" / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def parts(store, table="samples"):
    """Each part file's image ids, in the part's row order, as a sorted list (part names are random)."""
    files = sorted((store / table / "train").rglob("*.parquet"))
    return sorted(pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist() for f in files)


def all_rows(store):
    return Store(store).sql("SELECT * EXCLUDE (split) FROM samples ORDER BY image_id").to_pylist()


def expected_parts(records, failed, batch_size, rows_per_part):
    """The parts the serial loop writes, from the rule alone: batches of `batch_size` images in listing order,
    the unreadable ones left out; a part is written once it holds at least `rows_per_part` rows."""
    found, buffer = [], []
    for start in range(0, len(records), batch_size):
        buffer += [r.image_id for r in records[start:start + batch_size] if r.path not in failed]
        if len(buffer) >= rows_per_part:
            found.append(buffer)
            buffer = []
    return sorted([*found, buffer] if buffer else found)


def test_overlapped_parts_equal_the_serial_loop_and_attribute_batch(images, tmp_path, monkeypatch):
    overlapped, serial = tmp_path / "overlapped", tmp_path / "serial"
    options = {**TINY_API, "batch_size": 3, "rows_per_part": 4, "compact": False, "num_workers": 0}
    summary = ingest(overlapped, images, **options)
    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "OVERLAP", False)
        ingest(serial, images, **options)
    records = list_split(images, "train").records
    failed = {str(images / "train" / name) for name in CORRUPT}
    # parts: the same images in the same order, split where the rule says (batches of 3 do not divide 4)
    expected = expected_parts(records, failed, 3, 4)
    assert len(expected) > 3 and {len(p) for p in expected} != {4}  # the rule's edges are exercised
    assert parts(overlapped) == parts(serial) == expected
    assert summary.parts == len(expected) and summary.n_written == 19 and summary.n_errors == 2
    # error rows are written with the part that the serial loop wrote them with
    assert parts(overlapped, "ingest_errors") == parts(serial, "ingest_errors")
    assert sum(map(len, parts(overlapped, "ingest_errors"))) == 2
    # rows: bit-identical to the serial loop's, and to attribute_batch on the same batches of the same images
    got, reference = all_rows(overlapped), all_rows(serial)
    assert got == reference
    model = tiny_net().eval()
    by_id = {row["image_id"]: row for row in got}
    for start in range(0, len(records), 3):
        batch = [r for r in records[start:start + 3] if r.path not in failed]
        inputs = torch.stack([small(Image.open(r.path).convert("RGB")) for r in batch])
        result = attribute_batch(model, model.probe, inputs, torch.tensor([r.target for r in batch]))
        for i, record in enumerate(batch):
            row = by_id[record.image_id]
            assert (row["path"], row["target"], row["predicted_logit"]) == (record.path, record.target,
                                                                          int(result.logits[i].argmax()))
            np.testing.assert_allclose(row["attribution"], result.attribution[i].numpy(), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(row["input_sum"], result.input_sum[i].numpy(), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(row["target_logit"], result.logits[i, record.target].item(), rtol=1e-6)


def test_images_of_several_sizes_give_the_serial_loops_parts(tmp_path, monkeypatch):
    """A transform that does not resize: a loaded batch becomes several batches, one per size, each in flight
    in turn; the parts are the serial loop's all the same."""
    data = tmp_path / "data"
    for size, seed in (((8, 8), 0), ((11, 9), 1), ((6, 13), 2)):  # each class folder: three sizes, interleaved
        make_image_folder(data, "train", {"blue": 3, "green": 3, "red": 3}, size=size, seed=seed)
        for folder in ("blue", "green", "red"):
            for path in (data / "train" / folder).glob("00?.png"):
                path.rename(path.with_name(f"{size[0]}x{size[1]}-{path.name}"))
    options = {"model": "tests.models:colour_net", "layer": "probe", "transform": "tests.models:to_tensor",
               "progress": False, "batch_size": 5, "rows_per_part": 3, "compact": False, "num_workers": 0}
    ingest(tmp_path / "overlapped", data, **options)
    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "OVERLAP", False)
        ingest(tmp_path / "serial", data, **options)
    assert parts(tmp_path / "overlapped") == parts(tmp_path / "serial")
    assert sum(map(len, parts(tmp_path / "serial"))) == 27
    assert all_rows(tmp_path / "overlapped") == all_rows(tmp_path / "serial")


def fail_second_part(kind, monkeypatch):
    """Make the second samples part's write fail in the writer's thread: `disk-full` when the finished
    temporary file is flushed to disk (atomic_path turns it into DiskFull and removes the file), `permission`
    there too (into NotWritable). Returns the names of the threads the failures happened in."""
    seen, real_write, real_fsync = [], atomic.write_atomic, atomic.os.fsync
    writing = threading.local()

    def write(table, path):
        if path.parent.parent.name == "train" and path.parent.parent.parent.name == "samples":  # a part, not a schema file
            seen.append(path)
            writing.part = len(seen)
        try:
            real_write(table, path)
        finally:
            writing.part = None

    def fsync(fd):
        if getattr(writing, "part", None) == 2:
            failed.append(threading.current_thread().name)
            if kind == "disk-full":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise PermissionError(errno.EPERM, "Operation not permitted")  # an immutable folder (chattr +i)
        return real_fsync(fd)

    failed: list[str] = []
    monkeypatch.setattr(atomic, "write_atomic", write)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return failed


@pytest.mark.parametrize("kind", ["disk-full", "permission"])
def test_a_write_failing_in_the_thread_is_one_error_line_and_leaves_no_half_part(kind, tmp_path, cli,
                                                                                  monkeypatch):
    data = make_image_folder(tmp_path / "data", "train", {"a": 8, "b": 8, "c": 8})
    store = tmp_path / "store"
    args = ["ingest", data, "--store", store, *TINY, "--batch-size", 2, "--rows-per-part", 4, "--num-workers", 0]
    with monkeypatch.context() as patched:
        failed = fail_second_part(kind, patched)
        result = cli(*args)
    assert failed and all(name.startswith("polysem-parts") for name in failed)  # it failed in the thread
    if kind == "disk-full":
        assert_refused_last_line(result, "no space left on the disk holding", str(store / "samples" / "train"),
                                 "that file was not written (what was stored before it is kept)")
    else:
        assert_refused_last_line(result, "the file system refused to write", str(store / "samples" / "train"), "writable")
    assert result.output.count("Error") == 1 and "Traceback" not in result.output  # one line after the progress
    folder = store / "samples" / "train"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert [len(p) for p in parts(store)] == [4]  # the first part, whole; the second never appeared
    resumed = cli(*args)
    assert resumed.exit_code == 0 and "20 images stored, 4 already there" in resumed.output, resumed.output
    ingest(tmp_path / "reference", data, **TINY_API, batch_size=2, num_workers=0)
    assert all_rows(store) == all_rows(tmp_path / "reference")


def test_ctrl_c_keeps_the_batch_in_flight_and_the_part_being_written_then_resumes_identically(tmp_path,
                                                                                              monkeypatch):
    """Ctrl-C at the third batch's forward pass, while the first part is still being written (slowly, in the
    writer's thread): the first two batches are kept (the second was in flight), whole; the resume's rows are
    those of an uninterrupted ingest."""
    import time

    data = make_image_folder(tmp_path / "data", "train", {"a": 4, "b": 4, "c": 4})
    store, reference = tmp_path / "store", tmp_path / "reference"
    options = {**TINY_API, "batch_size": 2, "rows_per_part": 2, "compact": False, "num_workers": 0}
    calls, real_write = [], atomic.write_atomic

    def interrupting(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return attribute_layers(*args)

    def slow_write(table, path):
        if threading.current_thread().name.startswith("polysem-parts"):
            time.sleep(0.3)
        real_write(table, path)

    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "attribute_layers", interrupting)
        patched.setattr(atomic, "write_atomic", slow_write)
        with pytest.raises(KeyboardInterrupt, match="what was complete is stored"):
            ingest(store, data, **options)
    assert [len(p) for p in parts(store)] == [2, 2]  # on disk when ingest returned: flush waited for the thread
    assert [p.name for p in (store / "samples" / "train").iterdir() if p.name.startswith(".")] == []
    summary = ingest(store, data, **options)
    assert (summary.n_already, summary.n_written) == (4, 8)
    ingest(reference, data, **options)
    assert all_rows(store) == all_rows(reference)
    assert sorted(map(len, parts(store))) == [2] * 6
