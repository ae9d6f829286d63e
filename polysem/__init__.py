"""polysem: find and disentangle polysemantic CNN channels.

The notebook API lives in the submodules, imported on first use so that
`import polysem` stays cheap:

    from polysem import disentangle, evaluate, load_model
    from query import Store
    from ingest import ingest
"""

__version__ = "0.1.0"

_LAZY = {
    "disentangle": ("polysem.disentangle", "disentangle"),
    "load_model": ("polysem.disentangle", "load_model"),
    "evaluate": ("polysem.evaluate", "evaluate"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'polysem' has no attribute {name!r}")
