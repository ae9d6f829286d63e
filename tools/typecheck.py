"""Run mypy on the installed layout of polysem from the source tree.

The package maps folders (pyproject: polysem.ingest -> ingest/, polysem.query -> query/, polysem.sql -> sql/),
which mypy cannot follow from the source tree; this builds that layout as a tree of symlinks in
.cache/typecheck/polysem and runs `mypy -p polysem` on it with the settings of pyproject's [tool.mypy].
Usage: python tools/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".cache" / "typecheck"
MAPPED = {"ingest": "ingest", "query": "query", "sql": "sql"}  # polysem.<name> -> top-level folder


def build_tree() -> Path:
    package = TREE / "polysem"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for entry in (ROOT / "polysem").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(ROOT / folder)
    return TREE


def main(argv: list[str]) -> int:
    tree = build_tree()
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "polysem", *argv]
    env = {**os.environ, "MYPYPATH": str(tree)}
    return subprocess.run(command, cwd=tree, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
