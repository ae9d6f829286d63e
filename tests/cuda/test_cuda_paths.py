"""The CUDA paths, on a GPU only: the tensor decoder on nvJPEG and the overlapped ingest loop on a device.

Collected only with POLYSEM_CUDA_TESTS=1 (tests/conftest.py), which bench/device_check.sh sets on a GPU
machine: `make test` runs on CPUs, where these cannot run, and a suite that skips them would report a
check that never ran. Every test here fails on a machine without CUDA; the CPU tests cover the same code
with device="cpu".
"""

import numpy as np
import torch

import polysem
from polysem.ingest import ingest
from polysem.ingest import pipeline
from tests.test_decode import GREY, TINY_DEFAULT, errors, jpegs, make_mixed, rows, tensor_inputs
from tests.test_overlap import TINY_API, all_rows, images, parts  # noqa: F401  images: the fixture

assert torch.cuda.is_available(), "tests/cuda needs a GPU (bench/device_check.sh runs it on one)"


def test_on_cuda_the_same_code_decodes_with_nvjpeg(tmp_path):
    """Not measured here: nvJPEG's pixels may differ from libjpeg-turbo's; the bound is loose (a grey level on
    average) and the rows must be the same images."""
    data = make_mixed(tmp_path)
    paths = sorted((jpegs(tmp_path) / "train").rglob("*.jpg"))
    on_gpu, on_cpu = tensor_inputs(paths, torch.device("cuda")).cpu(), tensor_inputs(paths)
    assert (on_gpu - on_cpu).abs().mean().item() <= GREY
    gpu = polysem.ingest(tmp_path / "gpu", data, **TINY_DEFAULT, decode="tensor", device="cuda", max_pixels=100_000)
    cpu = polysem.ingest(tmp_path / "cpu", data, **TINY_DEFAULT, decode="tensor", device="cpu", max_pixels=100_000)
    assert (gpu.n_written, gpu.n_errors) == (cpu.n_written, cpu.n_errors) == (7, 3)
    assert sorted(rows(tmp_path / "gpu")) == sorted(rows(tmp_path / "cpu"))
    assert set(errors(tmp_path / "gpu")) == set(errors(tmp_path / "cpu"))


def test_on_cuda_the_overlapped_rows_equal_the_serial_loops(images, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    """Pinned buffers, non-blocking copies and the event: the rows and parts of the serial loop on the GPU."""
    options = {**TINY_API, "batch_size": 3, "rows_per_part": 4, "compact": False, "device": "cuda"}
    ingest(tmp_path / "overlapped", images, **options)
    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "OVERLAP", False)
        ingest(tmp_path / "serial", images, **options)
    assert parts(tmp_path / "overlapped") == parts(tmp_path / "serial")
    got, reference = all_rows(tmp_path / "overlapped"), all_rows(tmp_path / "serial")
    assert [r["image_id"] for r in got] == [r["image_id"] for r in reference]
    for x, y in zip(got, reference, strict=True):
        np.testing.assert_allclose(x["attribution"], y["attribution"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x["input_sum"], y["input_sum"], rtol=1e-5, atol=1e-6)
