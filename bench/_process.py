"""`python ...` as its own process, as the benchmarks time it (start-up included), or in this process.

A full-size run starts each measured command as a fresh interpreter. At `--tiny` size (tests/test_bench.py)
the same command runs in this process instead: the same code, without the start-up (each interpreter that
imports torch takes seconds), and its numbers mean nothing either way. Not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path


def python(args: list[str], in_process: bool = False, env: dict[str, str] | None = None,
           cwd: str | os.PathLike | None = None) -> str:
    """`python ARGS` (`-c CODE ...`, `-m MODULE ...` or `SCRIPT ...`) and its standard output; a failure raises
    RuntimeError with the end of its standard error. `in_process`: run it here (the environment is this
    process's, `env` is not applied), with sys.argv and the working folder as the process would have them."""
    if not in_process:
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)
        if result.returncode:
            raise RuntimeError(f"python {' '.join(args)[:200]} exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout
    out, err = io.StringIO(), io.StringIO()
    argv, here, code = sys.argv, Path.cwd(), 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if args[0] == "-c":
                sys.argv = ["-c", *args[2:]]
                exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
            elif args[0] == "-m":
                sys.argv = [args[1], *args[2:]]
                runpy.run_module(args[1], run_name="__main__", alter_sys=False)
            else:
                sys.argv = list(args)
                runpy.run_path(args[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
    if code:
        raise RuntimeError(f"python {' '.join(args)[:200]} exited {code}: {err.getvalue()[-2000:]}")
    return out.getvalue()
