"""The documentation: README a short guide whose every link resolves, the generated pages up to date, every
test a page names in existence, and no page or docstring narrating history (CHANGELOG.md holds that).

The generated pages are rendered here in-process by the same functions their scripts run
(`tools/cli_reference.py`, `tools/store_reference.py`) and compared with the committed files; the message
names the command that brings them up to date (`make docs` runs both).
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250
FIGURE_MAX_BYTES = 150_000
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# history narrated in place of what polysem does; "is used to" and "are used to" say what a thing is for
HISTORY = re.compile(r"\bissues? [0-9]+\b|\(issue [0-9]+|\breview|before the thread existed"
                     r"|(?<!\bis )(?<!\bare )(?<!\bbe )\bused to\b|\bno longer\b", re.IGNORECASE)
HISTORY_TREES = ("polysem", "ingest", "query", "sql", "tests", "bench", "examples", "docs", "tools")
HISTORY_SUFFIXES = {".py", ".sql", ".md", ".sh", ".toml", ".cfg", ".txt"}


def tool(name: str):
    """A script of tools/ as a module (tools/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(text: str, heading: str) -> str:
    lines = text.splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start + 1: end])


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower()).replace(" ", "-")


@lru_cache
def anchors(page: Path) -> frozenset[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return frozenset(slug(line) for line in text.splitlines() if line.startswith("#"))


def test_the_cli_reference_is_up_to_date():
    cli_reference = tool("cli_reference")
    assert cli_reference.TARGET.read_text() == cli_reference.render(), (
        "docs/cli-reference.md is out of date: run python tools/cli_reference.py (or make docs)")


def test_the_cli_reference_lists_every_command_and_option():
    """Guards the generator: every command gets a section, every shown option a row."""
    cli_reference = tool("cli_reference")
    text = cli_reference.TARGET.read_text()
    for path, command in cli_reference.walk(cli_reference.root_command()):
        assert f"\n## {cli_reference.title(path)}\n" in text
        for param in command.params:
            if cli_reference.is_option(param) and not getattr(param, "hidden", False):
                assert f"`{param.opts[0]}`" in section(text, f"## {cli_reference.title(path)}"), param.opts


def test_the_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    cli_reference = tool("cli_reference")
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_reference.render()
    monkeypatch.setenv("COLUMNS", "300")
    assert cli_reference.render() == narrow


def test_the_store_reference_is_up_to_date():
    store_reference = tool("store_reference")
    current = store_reference.TARGET.read_text()
    assert current == store_reference.render(current), (
        "docs/store.md's generated half is out of date: run python tools/store_reference.py (or make docs)")


def test_the_store_reference_covers_every_sql_object_and_parquet_column():
    from polysem.query import layout
    from polysem.query.sqlfiles import load_blocks

    store_reference = tool("store_reference")
    generated = store_reference.TARGET.read_text().split(store_reference.MARKER)[1]
    for block in load_blocks():
        assert re.search(rf"^#### `{block.name}[`(]", generated, re.MULTILINE), f"docs/store.md does not list {block.name}"
    for schema in (layout.SAMPLES, layout.INGEST_ERRORS, layout.CLASSES, layout.LAYER_WEIGHTS):
        for field in schema:
            assert f"| `{field.name}` |" in generated


def test_readme_is_a_short_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it a guide and link to docs/"


def test_the_quick_start_is_make_demo_and_make_test():
    quick = section(README.read_text(), "## Quick start")
    commands = [line.strip().split("#")[0].strip() for line in quick.splitlines() if line.startswith("    ")]
    assert commands == ["make demo", "make test"]
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert "demo" in targets and "test" in targets


def test_readme_shows_one_small_committed_figure():
    figures = [target for target in LINK.findall(README.read_text()) if target.endswith((".png", ".svg"))]
    assert len(figures) == 1, figures
    [figure] = figures
    path = (ROOT / figure).resolve()
    assert figure.startswith("docs/images/") and path.is_file(), figure
    assert path.stat().st_size < FIGURE_MAX_BYTES, f"{figure} is {path.stat().st_size} bytes"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
        if fragment and path.suffix == ".md":
            assert fragment in anchors(path), f"{page.name} links to {target}: {path.name} has no such heading"


@lru_cache
def defined_test_names() -> frozenset[str]:
    return frozenset(re.findall(r"^\s*def (test_\w+)", "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("test_*.py")), re.MULTILINE))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_test_a_page_names_exists(page):
    text = page.read_text()
    for path in re.findall(r"`(tests/[\w/]+\.py)`", text):
        assert (ROOT / path).is_file(), f"{page.name} names {path}, which does not exist"
    for name in re.findall(r"`(test_\w+)`", text):
        assert name in defined_test_names(), f"{page.name} names the test {name}, which no test file defines"


def history_files():
    for tree in HISTORY_TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if path.suffix in HISTORY_SUFFIXES and "fixtures" not in parts and "__pycache__" not in parts:
                yield path
    yield README


def test_no_page_or_docstring_narrates_history():
    """What changed, and why, is CHANGELOG.md's; everything else describes polysem as it is."""
    here = Path(__file__).resolve()
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in history_files() if path.resolve() != here
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
             if HISTORY.search(line)]
    assert not found, "history outside CHANGELOG.md:\n" + "\n".join(found)
