"""The face: the `polysem` command line. It parses options, calls the library and prints.

`app` holds the shared options and the one error handler; each topic's module registers its commands.
"""

from polysem.cli import run_commands, screen_commands, store_commands  # noqa: F401  (each registers its commands on `app`)
from polysem.cli.app import app, main

__all__ = ["app", "main"]
