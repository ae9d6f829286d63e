"""Ranks that cannot hang: they join within `--rank-timeout` or one line names the missing ranks; a rank killed
later is named by the others; a rank still working is waited for; Ctrl-C ends a wait (exit 130); under torchrun, a
refusal stops every rank.

A rank process here is started as torchrun starts it, by its environment (WORLD_SIZE, RANK, MASTER_ADDR,
MASTER_PORT), so that a test can leave a rank out or kill one: torchrun's agent would wait for a missing node itself,
and stop every rank when one dies. What needs no second process (a lone rank, Ctrl-C while waiting) runs in this
process with that environment; the worlds of processes start together in one test, so that their waits overlap.
tests/test_resume.py runs a whole world under torchrun.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

import polysem
from polysem.errors import ArgumentError, ArgumentRange
from polysem.query import Store
from tests.helpers import ROOT, TINY, assert_refused, make_image_folder
from tests.zygote import polysem_process

SLOW = ["--model", "tests.models:tiny_net", "--layer", "probe", "--transform", "tests.models:slow"]
STARTUP = 12  # seconds a rank may take to import torch, load the model and probe it on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank(number: int, world_size: int, port: int, *args, pythonpath: str = "") -> subprocess.Popen:
    """`polysem ingest ...` as rank `number` of `world_size`, meeting at 127.0.0.1:`port`."""
    env = {**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), pythonpath])),
           "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(world_size), "RANK": str(number), "LOCAL_RANK": str(number),
           "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for name in ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(name, None)
    return polysem_process("ingest", *args, "--device", "cpu", env=env, text=True)


def lines(output: str) -> list[str]:
    """The output's lines but the progress bar's."""
    return [line for line in output.splitlines() if line.strip() and not line.startswith("ingest ")]


@pytest.fixture
def images(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", "train", {"a": 4, "b": 4, "c": 4})


def as_rank(monkeypatch, number: int, world_size: int, port: int) -> None:
    """This process's environment as torchrun sets it for rank `number` of `world_size` (see `rank`)."""
    for name, value in {"WORLD_SIZE": world_size, "RANK": number, "LOCAL_RANK": number,
                        "LOCAL_WORLD_SIZE": world_size, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)


def test_a_lone_rank_names_the_ranks_that_did_not_join(images, tmp_path, cli, monkeypatch):
    """Rank 0 alone, and rank 1 alone (in another world), each with a 1 s timeout: one line each, exit 2. In this
    process: the ranks module reads the environment torchrun sets, as a rank process does."""
    outputs = {}
    for number in (0, 1):
        with monkeypatch.context() as env:
            as_rank(env, number, 2, free_port())
            started = time.monotonic()
            result = cli("ingest", images, "--store", tmp_path / f"s{number}", *TINY, "--rank-timeout", 1,
                         "--device", "cpu")
            elapsed = time.monotonic() - started
        assert result.exit_code == 2, result.output
        assert elapsed < 1 + STARTUP, elapsed
        outputs[number] = result.output
    assert lines(outputs[0]) == [
        ("Error: rank 1 of 2 did not join within 1 s: start every rank (torchrun --nproc-per-node 2 on one machine, "
         "or on every node with --nnodes) or raise --rank-timeout")]
    assert len(lines(outputs[1])) == 1, outputs[1]
    assert lines(outputs[1])[0].startswith("Error: rank 0 of 2 did not join within 1 s (nothing listens at "
                                           "127.0.0.1:"), outputs[1]
    assert "raise --rank-timeout" in outputs[1]
    assert not (tmp_path / "s0" / "samples").exists()  # nothing written


def test_ctrl_c_ends_a_rank_waiting_for_the_others(images, tmp_path, cli, monkeypatch, python_sigint):
    """SIGINT, raised in this process while rank 0 waits for rank 1 to join (the ranks module's first sleep in its
    wait), once rank 0 serves the store."""
    from polysem.ingest import ranks as ranks_module

    port = free_port()
    sent = []

    def ctrl_c(seconds):  # the wait's sleep: rank 0 waits for the others, so it serves the store by now
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sent.append(time.monotonic())
        signal.raise_signal(signal.SIGINT)
        time.sleep(seconds)

    monkeypatch.setattr(ranks_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=ctrl_c))
    as_rank(monkeypatch, 0, 2, port)
    result = cli("ingest", images, "--store", tmp_path / "s", *TINY, "--rank-timeout", 600, "--device", "cpu")
    assert result.exit_code == 130, result.output
    assert len(sent) == 1 and time.monotonic() - sent[0] < 5
    assert lines(result.output) == ["Interrupted: stopped while waiting for rank 1 to join; nothing was written."]


UNEVEN = (
    "import os, time\n"
    "from tests.models import small\n"
    "calls = []\n"
    "def slow_on_rank1(image):\n"
    "    calls.append(1)\n"
    "    if os.environ.get('RANK') == '1' and len(calls) > 1:  # not the probe's image: rank 1 joins in time\n"
    "        time.sleep(2)\n"
    "    return small(image)\n")


def test_a_killed_rank_is_named_a_working_one_is_waited_for_and_a_refusal_stops_every_rank(tmp_path, cli):
    """Four worlds of rank processes, started together so that their waits overlap:

    - rank 1 killed: rank 0 names it once it has been silent for the timeout;
    - rank 0 killed (it serves the ranks' store, as without torchrun's agent): rank 1 names it at the next meeting,
      without waiting;
    - rank 1 takes 8 s longer than rank 0, with a 5 s timeout: its heartbeat keeps rank 0 waiting, and both finish;
    - under torchrun, rank 0 refuses (another ingest holds the split's lock): both ranks stop and say why.
    """
    refused = tmp_path / "refused"
    data = make_image_folder(refused / "data", "train", {"a": 12, "b": 12, "c": 12})
    assert cli("ingest", data, "--store", refused / "s", *TINY, "--classes", "0").exit_code == 0
    with ThreadPoolExecutor(4) as pool:
        worlds = [pool.submit(killed_world, tmp_path / "killed-1", 1), pool.submit(killed_world, tmp_path / "killed-0", 0),
                  pool.submit(uneven_world, tmp_path / "uneven"), pool.submit(refused_torchrun, data, refused / "s")]
        for world in worlds:
            world.result()


def stop(runs: list[subprocess.Popen]) -> None:
    """Kill what is still running (a world whose test failed)."""
    for run in runs:
        if run.poll() is None:
            run.kill()
            run.wait()


def killed_world(folder: Path, killed: int) -> None:
    data = make_image_folder(folder / "data", "train", {"a": 12, "b": 12, "c": 12})
    store, port = folder / "s", free_port()
    args = [data, "--store", store, *SLOW, "--batch-size", 2, "--rows-per-part", 4, "--rank-timeout", 6]
    runs = [rank(0, 2, port, *args), rank(1, 2, port, *args)]
    try:
        parts = store / "samples" / "train"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(parts.rglob(f"part-r00{killed}-*.parquet")):
            time.sleep(0.05)
        runs[killed].send_signal(signal.SIGKILL)
        runs[killed].wait()
        stopped = time.monotonic()
        survivor = runs[1 - killed]
        output = survivor.communicate(timeout=60)[0]
    finally:
        stop(runs)
    assert survivor.returncode == 2, output
    kept = "the parts written so far are kept: run the same command again to resume"
    if killed == 1:
        assert lines(output) == [f"Error: rank 1 stopped (no sign of it for 6 s: killed, or its machine lost); {kept}"]
    else:
        assert lines(output) == [(f"Error: rank 0 stopped (the ranks' store at 127.0.0.1:{port} is gone: its "
                                  f"connection closed); {kept}")]
    assert time.monotonic() - stopped < 6 + 10
    stored = Store(store).sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    assert 4 <= stored < 36


def uneven_world(folder: Path) -> None:
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "uneven.py").write_text(UNEVEN)
    data = make_image_folder(folder / "data", "train", {"a": 3, "b": 3, "c": 3})
    store, port = folder / "s", free_port()
    args = [data, "--store", store, "--model", "tests.models:tiny_net", "--layer", "probe", "--transform",
            "uneven:slow_on_rank1", "--num-workers", 0, "--rank-timeout", 5]
    runs = [rank(number, 2, port, *args, pythonpath=str(folder / "code")) for number in (0, 1)]
    try:
        outputs = [run.communicate(timeout=120)[0] for run in runs]
    finally:
        stop(runs)
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert "train: 9 images stored, 0 already there, 0 unreadable" in outputs[0]
    assert len(Store(store).sql("SELECT image_id FROM samples")) == 9


def refused_torchrun(data: Path, store: Path) -> None:
    import fcntl

    env = {**os.environ, "POLYSEM_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(store / "samples" / ".train.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        launch = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "polysem.cli", "ingest", str(data), "--store", str(store), "--device", "cpu"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
    assert launch.returncode != 0
    assert (launch.stdout + launch.stderr).count("another ingest of split 'train'") == 2  # both ranks say why
    assert len(Store(store).sql("SELECT image_id FROM samples")) == 12


@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ArgumentRange, "`rank_timeout` must be in (0, 604800], got 0 seconds"),
    (-5.0, ArgumentRange, "`rank_timeout` must be in (0, 604800], got -5.0 seconds"),
    (float("nan"), ArgumentRange, "`rank_timeout` must be in (0, 604800], got nan seconds"),
    ("30", ArgumentError, "`rank_timeout` must be a number (int or float), got str '30'"),
    (True, ArgumentError, "`rank_timeout` must be a number (int or float), got bool True"),
])
def test_the_rank_timeout_is_checked_before_anything_is_written(images, tmp_path, value, error, message):
    with pytest.raises(error) as raised:
        polysem.ingest(tmp_path / "s", images, model="tests.models:tiny_net", layer="probe",
                       transform="tests.models:small", rank_timeout=value, progress=False)
    assert str(raised.value) == message
    assert not (tmp_path / "s").exists()


def test_the_cli_names_the_option(images, tmp_path, cli):
    assert_refused(cli("ingest", images, "--store", tmp_path / "s", *TINY, "--rank-timeout", 0),
                   "--rank-timeout must be in (0, 604800], got 0.0 seconds")
    assert not (tmp_path / "s").exists()
