"""polysem as a library: one import name, the README's API section run as written, twice, in a notebook."""

import json
import os
import re
import subprocess
import sys

import nbformat
from nbclient import NotebookClient

from tests.helpers import ROOT, make_colour_images

SETTINGS = re.compile(r"^DATA_DIR, MODEL, WEIGHTS, LAYER, TRANSFORM = .*# yours$", re.M)


def readme_api_cell() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):readme.index("## Bring your own model")]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# after each run of the cell: what a reader sees of its results
RECORD = ("seen = globals().setdefault('seen', [])\n"
          "seen.append({'top': top.num_rows, 'pairs': pairs.num_rows, 'n_images': result['concept1']['n_images'], "
          "'model': type(model).__name__, 'run_id': run.run_id, 'sources': run.sources})")


def test_readme_api_section_runs_as_written_twice_in_a_notebook(tmp_path):
    """The README's API section, as written but for its one settings line, executed by nbclient in a kernel without
    ipywidgets (the kernel a new user has), run twice (a cell run again): it works, and progress shows as plain text,
    never as a widget."""
    import importlib.util

    import polysem

    assert importlib.util.find_spec("ipywidgets") is None
    data = make_colour_images(tmp_path / "colours", "train", 6)
    make_colour_images(data, "val", 4, seed=1)
    cell = readme_api_cell()
    assert len(SETTINGS.findall(cell)) == 1  # the only line a reader edits
    cell = SETTINGS.sub(f'DATA_DIR, MODEL, WEIGHTS, LAYER, TRANSFORM = "{data}", "tests.models:colour_net", None, '
                        '"probe", "tests.models:to_tensor"', cell)
    check = ("import json\nprint(json.dumps({'runs': store.sql('SELECT count(*) AS n FROM runs').column('n')[0].as_py(), "
             "'seen': seen}))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in
                                               (cell, RECORD, cell, RECORD, check)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLYSEM_OFFLINE": "1"}
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out["output_type"] == "error"]
    assert not errors, errors
    printed = "".join(out.get("text", "") for out in outputs if out["output_type"] == "stream")
    answer = json.loads(printed.strip().splitlines()[-1])
    assert answer["runs"] == 2
    runs = answer["seen"]
    assert len(runs) == 2
    for seen in runs:
        assert seen["top"] >= 1 and seen["pairs"] >= 1
        assert seen["n_images"] > 0
        assert seen["model"] == "ColourNet"
    assert runs[0]["run_id"] != runs[1]["run_id"] and runs[0]["sources"] == runs[1]["sources"] == [[1], [0]]
    assert polysem.Store(tmp_path / "polysem-store").sql("SELECT count(*) AS n FROM runs").column("n")[0].as_py() == 2
    widgets = [out for out in outputs if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    assert not widgets and "Output()" not in json.dumps(outputs)


def test_api_names_are_functions_whatever_was_imported_before():
    import importlib

    import polysem
    import polysem.method.disentangling  # noqa: F401  the modules behind the names
    import polysem.method.evaluation  # noqa: F401

    for _ in range(2):
        from polysem import disentangle, evaluate, load_model, screen

        assert all(callable(f) and not isinstance(f, type(polysem)) for f in (disentangle, evaluate, load_model, screen))
        importlib.reload(polysem)
    assert callable(polysem.ingest) and polysem.ingest.ingest.__name__ == "ingest"


def test_only_polysem_is_installed_and_user_modules_do_not_shadow_it(tmp_path):
    """From a neutral folder there is no top-level ingest/query/sql; a folder with its own ones breaks nothing."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = ("import importlib.util as u; print([n for n in ('ingest', 'query', 'sql') if u.find_spec(n)])")
    neutral = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert neutral.stdout.strip() == "[]", neutral.stderr
    for name in ("ingest", "query", "sql"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the user module was imported, not polysem')\n")
    code = ("import polysem; s = polysem.Store('nowhere'); import polysem.query.store, polysem.sql; "
            "from polysem.query.sqlfiles import load_blocks; print(len(load_blocks()) > 10)")
    user = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert user.returncode == 0 and user.stdout.strip() == "True", user.stderr
    version = subprocess.run([sys.executable, "-m", "polysem.cli", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("polysem "), version.stderr
