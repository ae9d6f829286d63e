"""polysem: find and disentangle polysemantic CNN channels.

The notebook API (each name is one function or class, never a module):

    import polysem
    store = polysem.Store("polysem-store")
    polysem.ingest(store, "DATA_DIR", split="train", model="resnet50", weights="imagenet")
    polysem.screen(store)                                   # -> pyarrow.Table
    polysem.channel_concepts(store)                         # each polysemantic channel's concepts
    run = polysem.disentangle(store, channel=1660, concept1=[530], concept2=[938])  # -> Run
    polysem.evaluate(store, run.run_id)                     # -> Evaluation: where each concept's activation went
    polysem.verify(store, run.run_id).resolved              # -> Verification: does each new channel serve one concept?
    model = polysem.load_model(store, run.run_id)

Results are frozen dataclasses (polysem.util.results.Result): their fields are documented and type-checked,
and `to_dict()` gives the plain data the command line prints as JSON.

Names are resolved on first use so that `import polysem` stays cheap (no torch).
"""

from polysem.version import __version__

# public name -> (module, attribute); no module of polysem has one of these names
_API = {
    "Store": ("polysem.query.store", "Store"),
    "screen": ("polysem.query.screening", "polysemantic_pairs"),
    "disentangle": ("polysem.method.runs", "disentangle"),
    "load_model": ("polysem.method.runs", "load_model"),
    "evaluate": ("polysem.reporting", "evaluate"),
    "channel_concepts": ("polysem.method.concepts", "channel_concepts"),
    "verify": ("polysem.method.verification", "verify"),
}

__all__ = ["Store", "__version__", "channel_concepts", "disentangle", "evaluate", "ingest", "load_model", "screen",
           "verify"]


def __getattr__(name):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name == "ingest":  # the ingest package, which is callable: polysem.ingest(store, DATA_DIR, ...)
        import importlib

        return importlib.import_module("polysem.ingest")
    raise AttributeError(f"module 'polysem' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
