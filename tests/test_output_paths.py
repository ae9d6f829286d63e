"""Outputs go only to regular files, folders or new paths.

Real special files: a FIFO (os.mkfifo), a character device node (os.mknod; the tests run as root, and a
failing mknod fails the test), a unix socket, /dev/null, and links to each. Every refusal is one line,
the special file is the same node afterwards and the store is byte-identical. `--out -` is standard output.
"""

from __future__ import annotations

import io
import os
import pty
import socket
import stat
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from polysem.errors import QueryError
from polysem.query import Store
from tests.helpers import ROOT, assert_refused, snapshot


@pytest.fixture
def specials(tmp_path):
    """name -> (path, S_IS* test, words the refusal holds): each kind of special file, and a link to it."""
    folder = tmp_path / "special"
    folder.mkdir()
    fifo = folder / "fifo.csv"
    os.mkfifo(fifo)
    device = folder / "device.csv"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers; must not fail (root)
    sock_path = folder / "socket.csv"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    found = {"fifo": (fifo, stat.S_ISFIFO, "a FIFO"), "device": (device, stat.S_ISCHR, "a character device"),
             "socket": (sock_path, stat.S_ISSOCK, "a socket")}
    for name, (target, test, words) in list(found.items()):
        link = folder / f"link-to-{name}.csv"
        link.symlink_to(target)
        found[f"link-{name}"] = (link, test, words)
    link = folder / "link-to-dev-null.csv"
    link.symlink_to("/dev/null")
    found["dev-null"] = (os.path.realpath("/dev/null"), stat.S_ISCHR, "system path")
    found["link-dev-null"] = (link, stat.S_ISCHR, "system path")
    yield found
    sock.close()


def _identity(path):
    st = os.stat(path)  # through links: the node itself
    return st.st_ino, st.st_mode, st.st_rdev


def test_special_files_are_refused_by_every_command_and_stay_untouched(cli, colour_store, specials):
    before = snapshot(colour_store)
    for name, (path, is_kind, words) in specials.items():
        identity = _identity(path)
        link_before = os.readlink(path) if os.path.islink(path) else None
        for args in (["sql", "SELECT 1 AS x", "--out", path, "--format", "csv"],
                     ["sql", "SELECT 1 AS x", "--out", path, "--format", "parquet"],
                     ["export", "classes", "--out", path, "--format", "json"],
                     ["plot", "wordnet", "--out", path],
                     ["evaluate", "any-run", "--plots", path],
                     ["report", "--out", path]):
            assert_refused(cli(*args, "--store", colour_store), words)
            assert is_kind(os.stat(path).st_mode), (name, args)
            assert _identity(path) == identity, (name, args)
            assert (os.readlink(path) if os.path.islink(path) else None) == link_before
    assert snapshot(colour_store) == before


def test_the_api_refuses_special_files(colour_store, specials):
    store = Store(colour_store)
    before = snapshot(colour_store)
    for path, is_kind, words in specials.values():
        with pytest.raises(QueryError, match=words):
            store.export("classes", path, fmt="csv")
        assert is_kind(os.stat(path).st_mode)
    assert snapshot(colour_store) == before


@pytest.mark.parametrize("args", [
    ["sql", "SELECT 1", "--out", ""],
    ["sql", "SELECT 1", "--out", "  ", "--format", "csv"],
    ["export", "classes", "--out", ""],
    ["plot", "wordnet", "--out", ""],
    ["evaluate", "any-run", "--plots", ""],
    ["report", "--out", ""],
])
def test_an_empty_output_is_refused_by_every_command(cli, colour_store, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)  # where an empty path would have written
    before = snapshot(colour_store)
    flag = "--plots" if "--plots" in args else "--out"
    assert_refused(cli(*args, "--store", colour_store), f"{flag} is empty")
    assert list(tmp_path.iterdir()) == []
    assert snapshot(colour_store) == before


def test_the_api_refuses_an_empty_output(colour_store, tmp_path, monkeypatch):
    from polysem.reporting import evaluate, write_report

    monkeypatch.chdir(tmp_path)
    with pytest.raises(QueryError, match="`out` is empty"):
        Store(colour_store).export("classes", "", fmt="csv")
    with pytest.raises(QueryError, match="`out` is empty"):
        write_report(colour_store, "")
    with pytest.raises(QueryError, match="`plots_dir` is empty"):
        evaluate(colour_store, "any-run", plots_dir="")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_store_path_is_refused_not_taken_for_the_current_folder(cli, data_dir, tmp_path, monkeypatch):
    import polysem
    from polysem.errors import ArgumentRange

    monkeypatch.chdir(tmp_path)  # where an empty path would have made a store
    before = sorted(tmp_path.rglob("*"))
    for args in (["info"], ["ingest", data_dir, "--model", "tests.models:tiny_net", "--layer", "probe"]):
        assert_refused(cli(*args, "--store", ""), "--store must name a folder, got an empty path", "pass . for")
    with pytest.raises(ArgumentRange, match="`store` must name a folder"):
        polysem.Store("")
    assert sorted(tmp_path.rglob("*")) == before


def test_dev_stdout_points_to_dash(cli, colour_store):
    result = cli("sql", "SELECT 1", "--out", "/dev/stdout", "--format", "csv", "--store", colour_store)
    assert_refused(result, "/dev/stdout is a system path", "for standard output give -")
    assert "pipe" not in result.output and "/proc" not in result.output


def test_out_dash_writes_csv_and_json_to_standard_output(cli, colour_store):
    shown = cli("sql", "SELECT * FROM classes ORDER BY class_id", "--format", "csv", "--store", colour_store)
    piped = cli("sql", "SELECT * FROM classes ORDER BY class_id", "--out", "-", "--format", "csv",
                "--store", colour_store)
    assert piped.exit_code == 0 and piped.stdout == shown.stdout and "class_id" in piped.stdout
    exported = cli("export", "classes", "--out", "-", "--format", "json", "--store", colour_store)
    assert exported.exit_code == 0 and exported.stdout.startswith("[{") and "rows ->" not in exported.output


def test_out_dash_writes_parquet_to_a_pipe(cli, colour_store):
    result = cli("export", "classes", "--out", "-", "--format", "parquet", "--store", colour_store)
    assert result.exit_code == 0, result.output
    table = pq.read_table(io.BytesIO(result.stdout_bytes))
    assert table.num_rows == 3 and "name" in table.column_names


def test_out_dash_needs_a_format(cli, colour_store):
    assert_refused(cli("sql", "SELECT 1", "--out", "-", "--store", colour_store), "--format")
    assert_refused(cli("export", "classes", "--out", "-", "--store", colour_store), "--format")
    assert_refused(cli("plot", "wordnet", "--out", "-", "--store", colour_store), "standard output", "not possible")


def test_parquet_is_never_written_to_a_terminal(colour_store):
    """A real terminal (a pty) as standard output: parquet is refused, csv is written."""
    def run(fmt):
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.run([sys.executable, "-m", "polysem.cli", "export", "classes", "--out", "-",
                                   "--format", fmt, "--store", str(colour_store)],
                                  stdout=terminal, stderr=subprocess.PIPE, cwd=ROOT, timeout=120)
            os.close(terminal)
            terminal = -1
            shown = b""
            while True:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the terminal's other side is closed and drained
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(controller)
            if terminal >= 0:
                os.close(terminal)
        return proc, shown

    proc, shown = run("parquet")
    assert proc.returncode == 2 and b"PAR1" not in shown
    assert proc.stderr.decode().startswith("Error: parquet is binary and standard output is a terminal")
    proc, shown = run("csv")
    assert proc.returncode == 0 and b"class_id" in shown


@pytest.mark.parametrize("entry", ["img link", "img file", "index.html link", "index.html folder"])
def test_a_report_folder_whose_img_or_page_is_a_link_or_the_wrong_kind_is_refused(cli, colour_store, tmp_path, entry):
    """The report replaces OUT/index.html and writes its images into OUT/img: a link there would take them
    anywhere it points, the store included."""
    out, aside = tmp_path / "report", tmp_path / "aside"
    out.mkdir()
    aside.mkdir()
    name, kind = entry.split(" ")
    if kind == "link":
        (out / name).symlink_to(colour_store / "artifacts" if name == "img" else aside / "page.html")
    elif kind == "file":
        (out / name).write_text("mine")
    else:
        (out / name).mkdir()
    before = snapshot(colour_store), snapshot(out), snapshot(aside)
    what = "a link" if kind == "link" else ("no folder" if name == "img" else "no file")
    assert_refused(cli("report", "--store", colour_store, "--out", out), f"--out {out} holds {name}, which is {what}",
                   f"remove {out / name} or choose another --out")
    assert (snapshot(colour_store), snapshot(out), snapshot(aside)) == before


def test_an_img_link_made_while_the_figures_are_drawn_is_refused(colour_store, tmp_path, monkeypatch):
    """The report's folder is checked before drawing and `img` again as it is opened to move the images in: a link
    put there meanwhile (another process) takes nothing anywhere."""
    from polysem.errors import PolysemError
    from polysem.figures import page
    from polysem.reporting import write_report

    out, elsewhere = tmp_path / "report", tmp_path / "elsewhere"
    elsewhere.mkdir()
    drawn = page.write_page

    def draw_then_link(*args, **kwargs):
        made = drawn(*args, **kwargs)
        out.mkdir(exist_ok=True)
        (out / "img").symlink_to(elsewhere)
        return made

    monkeypatch.setattr(page, "write_page", draw_then_link)
    before = snapshot(colour_store)
    with pytest.raises(PolysemError, match="holds img, which is a link or no folder"):
        write_report(colour_store, out, device="cpu")
    assert list(elsewhere.iterdir()) == [] and not (out / "index.html").exists()
    assert snapshot(colour_store) == before


def test_a_folder_named_like_a_figure_in_img_is_refused_before_any_image_moves(cli, fixture_store, tmp_path):
    colour_store = fixture_store("opponent-colour-run").store  # a run: the report draws figures
    out = tmp_path / "report"
    assert cli("report", "--store", colour_store, "--out", out, "--device", "cpu").exit_code == 0
    images = sorted((out / "img").iterdir())
    (images[-1]).unlink()
    images[-1].mkdir()  # where the report writes that figure again
    before = snapshot(out)
    assert_refused(cli("report", "--store", colour_store, "--out", out, "--device", "cpu"),
                   f"holds {images[-1]}, which is no file", "remove it or choose another --out")
    assert snapshot(out) == before and images[-1].is_dir()
