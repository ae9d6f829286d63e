"""The layers are where the folders say: every import of every module, read with ast, goes down (or
sideways), never up; no import cycles; figures never touch the store, a model or torch."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# lowest first; a module may import its own layer and the layers before it
LAYERS = [
    ("leaf", ["polysem.errors", "polysem.constants", "polysem.version", "polysem.util"]),
    ("store", ["polysem.sql", "polysem.query"]),
    ("ingest", ["polysem.ingest"]),
    ("method", ["polysem.method"]),
    ("figures", ["polysem.figures"]),
    ("face", ["polysem.reporting", "polysem.cli", "polysem"]),
]
# the installed package names of the repository's top-level folders (pyproject.toml)
FOLDERS = {"polysem": "polysem", "ingest": "polysem.ingest", "query": "polysem.query", "sql": "polysem.sql"}
FIGURES_MAY_NOT = ("torch", "torchvision", "duckdb", "polysem.query", "polysem.ingest", "polysem.method")


def module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


MODULES = module_files()


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best[0]


def imports_of(module: str) -> set[str]:
    """Every module named by an import anywhere in the file (also inside functions)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from polysem.figures import plots` imports the module polysem.figures.plots
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return found


def polysem_imports(module: str) -> set[str]:
    return {name for name in imports_of(module) if name == "polysem" or name.startswith("polysem.")}


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 30
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    own = layer_of(module)
    for name in polysem_imports(module):
        assert layer_of(name) <= own, (f"{module} ({LAYERS[own][0]}) imports {name} ({LAYERS[layer_of(name)][0]}), "
                                       "a layer above it")


def test_leaves_import_only_leaves():
    for module in MODULES:
        if layer_of(module) == 0:
            assert all(layer_of(name) == 0 for name in polysem_imports(module)), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) == 4))
def test_figures_never_touch_the_store_a_model_or_torch(module):
    for name in imports_of(module):
        assert not any(name == banned or name.startswith(banned + ".") for banned in FIGURES_MAY_NOT), \
            f"{module} imports {name}"


def test_no_import_cycles():
    graph = {m: {n for n in polysem_imports(m) if n in MODULES and n != m} for m in MODULES}
    # a package's __init__ importing its own submodules is how Python packages work, not a cycle
    for m in graph:
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_what_it_forbids(tmp_path):
    """The tests above can fail: a method module importing a figure, a figure importing the store."""
    (tmp_path / "up.py").write_text("def f():\n    from polysem.figures import plots\n")
    (tmp_path / "draws.py").write_text("from polysem.query.store import Store\nimport torch\n")
    MODULES.update({"polysem.method.up_example": tmp_path / "up.py", "polysem.figures.draws_example": tmp_path / "draws.py"})
    try:
        with pytest.raises(AssertionError, match="a layer above it"):
            test_imports_go_down("polysem.method.up_example")
        with pytest.raises(AssertionError, match="imports"):
            test_figures_never_touch_the_store_a_model_or_torch("polysem.figures.draws_example")
    finally:
        del MODULES["polysem.method.up_example"], MODULES["polysem.figures.draws_example"]
