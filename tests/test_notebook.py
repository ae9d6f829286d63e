"""Notebooks need nothing extra: the README's API section, executed as a notebook by nbclient in a kernel
without ipywidgets, runs twice (a cell run again); progress shows as plain text, never as a widget."""

import json
import os

import nbformat
from nbclient import NotebookClient

from tests.helpers import ROOT, make_colour_images
from tests.test_api import SETTINGS, readme_api_cell


def test_readme_api_section_runs_in_a_notebook_twice(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("ipywidgets") is None  # the kernel a new user has
    data = make_colour_images(tmp_path / "colours", "train", 6)
    make_colour_images(data, "val", 4, seed=1)
    cell = SETTINGS.sub(f'DATA_DIR, MODEL, WEIGHTS, LAYER, TRANSFORM = "{data}", "tests.models:colour_net", None, '
                        '"probe", "tests.models:to_tensor"', readme_api_cell())
    check = ("print(json.dumps({'runs': store.sql('SELECT count(*) AS n FROM runs').column('n')[0].as_py(), "
             "'sources': run.sources}))")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell), nbformat.v4.new_code_cell(cell),
                                               nbformat.v4.new_code_cell("import json\n" + check)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLYSEM_OFFLINE": "1"}
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out["output_type"] == "error"]
    assert not errors, errors
    printed = "".join(out.get("text", "") for out in outputs if out["output_type"] == "stream")
    assert json.loads(printed.strip().splitlines()[-1]) == {"runs": 2, "sources": [[1], [0]]}
    widgets = [out for out in outputs if "application/vnd.jupyter.widget-view+json" in out.get("data", {})]
    assert not widgets and "Output()" not in json.dumps(outputs)
