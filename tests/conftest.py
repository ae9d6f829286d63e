import functools
import gc
import os
import signal
from pathlib import Path

import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner

from polysem.cli import app
from tests.helpers import (  # noqa: F401  re-exported: tests import these from here
    COLOUR,
    COLOUR_WNIDS,
    COLOURS,
    ROOT,
    TINY,
    Built,
    StoreCache,
    make_colour_images,
    make_image_folder,
    map_logits,
)

os.environ.setdefault("POLYSEM_OFFLINE", "1")  # never try to download weights in tests

# typer's CliRunner builds the click command from every command's signature on each invoke (30 ms); the app
# does not change during a run, so every CliRunner of the suite runs one command built once
typer.testing._get_command = functools.cache(typer.main.get_command)

# tests/cuda runs on a GPU machine only (bench/device_check.sh sets this): on a CPU its tests could only fail
collect_ignore = [] if os.environ.get("POLYSEM_CUDA_TESTS") == "1" else ["cuda"]


def pytest_configure(config):
    """Under pytest-xdist (`-n N`, one worker per core) each worker runs torch on one thread, unless the user
    set OMP_NUM_THREADS. With torch's default (a thread per core) in every worker, the workers' threads
    fight over the cores: on 2 cores a 1 s visualisation test took 45 s. Subprocesses inherit the setting."""
    if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    # A worker holds torch, matplotlib and a WordNet reader (millions of objects): each full collection of Python's
    # cyclic GC scans them all (0.3 to 0.5 s). Young collections 14 times rarer make full ones 14 times rarer too.
    gc.set_threshold(10_000, 10, 10)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test, as a command started from a terminal has: a process started with
    SIGINT ignored (a background job of a non-interactive shell, some CI runners) keeps it ignored, and so do
    pytest-xdist's workers it starts, where a Ctrl-C raised in the test would then do nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root, "train", {"cat": 4, "dog": 3, "emu": 3})
    make_image_folder(root, "val", {"cat": 2, "dog": 2, "emu": 2}, seed=1)
    return root


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cli(monkeypatch):
    """Run `polysem ...` in-process from the repository root; returns the click Result."""
    monkeypatch.chdir(ROOT)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory) -> StoreCache:
    """The fixture stores of this run (tests.helpers.BUILDERS), each built once. Under pytest-xdist each worker's
    temporary folder is <run>/popen-gwN: the cache sits in <run>, which the workers share."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return StoreCache(base / "fixture-stores")


@pytest.fixture
def fixture_store(store_cache, tmp_path_factory):
    """fixture_store(name) -> Built: this test's own copy of fixture store `name`, in a folder of its own (not
    in tmp_path, which some tests check stays empty)."""
    return lambda name: store_cache.copy(name, tmp_path_factory.mktemp(name) / name)


@pytest.fixture
def colour_store(fixture_store) -> Path:
    """A store of the known-answer ColourNet: train and val splits ingested."""
    return fixture_store("colour").store
