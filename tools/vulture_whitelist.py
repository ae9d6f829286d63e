"""Names vulture reports as unused that Python, torch, Typer or a dataclass use where vulture cannot see it.

`make test` runs `vulture polysem ingest query sql tools/vulture_whitelist.py --min-confidence 60`: 60 is the
confidence vulture gives every unused function, method, class, attribute and variable (it reports unused
imports at 90 and unreachable code at 100), so a higher bar would let exactly the dead code through that the
check is for. Each name below says who uses it; a name that is really unused is deleted, not listed here.
This file is read by vulture, never imported.
"""

# ruff: noqa: B018, F821  (bare names: vulture counts them as used)

# PEP 562 module hooks: `polysem.Store`, `dir(polysem)` (polysem/__init__.py)
__getattr__
__dir__

# the ingest package made callable, `polysem.ingest(store, DATA_DIR)`: the module's class is replaced
_.__class__

# the SQL blocks' generated methods show their parameters to help() and inspect (query/sqlfiles.py)
_.__signature__

# torch calls nn.Module.forward from __call__ (DisentangledConv, FourierImage, MacoImage)
_.forward

# Typer: the app's callback (--version), commands registered by @command() whose names appear nowhere else,
# and the enum members that are choices of an option
_main
layers  # polysem layers
_.authors  # evaluate --selection authors
_.fourier  # visualize --method fourier

# dataclass fields read by dataclasses.fields() (Result.to_dict, the CLI's JSON), not by name
_.polysem_version  # Run

# IPython's rich display hook: a notebook calls it to show a result
_._repr_markdown_  # Evaluation, and other results

# nltk's WordNetCorpusReader calls map_wn from its constructor (polysem.method.wordnet.english_reader overrides it)
_.map_wn
