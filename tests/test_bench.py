"""A benchmark cannot rot: each script in bench/ runs at its tiny size (`--tiny`), and `make bench` runs them all.

The full-size runs are `make bench`; their numbers are in docs/benchmarks.md. bench/device_check.sh
needs a GPU, so here it is only parsed by bash.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BENCH = ROOT / "bench"
# helpers start with an underscore (bench/_synthetic.py); every other .py is a benchmark
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def bench_recipe() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^bench:.*\n((?:\t.*\n?)+)", makefile, re.M)
    assert match, "the Makefile has no bench target"
    return match.group(1)


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", [*SCRIPTS, "device_check.sh"])
def test_make_bench_runs_it(script):
    assert f"bench/{script}" in bench_recipe(), f"`make bench` does not run bench/{script}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_runs_at_tiny_size(script, tmp_path, monkeypatch, capsys):
    """In this process (torch is imported already), as `python bench/SCRIPT --tiny` from another folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--tiny"])
    monkeypatch.syspath_prepend(str(BENCH))  # a script finds its helpers beside it, as python does
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for the subprocesses a benchmark starts itself
    monkeypatch.setenv("POLYSEM_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    except SystemExit as stop:
        assert not stop.code, f"bench/{script} --tiny exited with {stop.code}"
    assert capsys.readouterr().out.strip(), f"bench/{script} --tiny printed no result"


def test_device_check_parses():
    result = subprocess.run(["bash", "-n", str(BENCH / "device_check.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
