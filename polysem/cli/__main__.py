"""`python -m polysem.cli` (what torchrun runs) is the `polysem` command."""

from polysem.cli import main

main()
