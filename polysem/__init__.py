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

`polysem.ingest` also takes a map-style torch Dataset in place of DATA_DIR and an nn.Module in place of a model
name; `polysem.use(store, model=net, data={"train": dataset})` gives them to a later process (ingest/objects.py).

Every command of the `polysem` CLI is a function here with the same arguments and refusals: `layers`,
`ingest`, `compact`, `check`, `screen`, `wordnet`, `plot_wordnet`, `channel_concepts`, `disentangle`,
`verify`, `evaluate`, `visualize`, `runs` / `run_record`, `report`, and `Store` for `info`, `classes`,
`sql` and `export`. An empty answer warns with why (`polysem.errors.EmptyAnswer`), as the CLI says it.

Results are frozen dataclasses (polysem.util.results.Result): their fields are documented and type-checked,
and `to_dict()` gives the plain data the command line prints as JSON.

Names are resolved on first use so that `import polysem` stays cheap (no torch).
"""

from polysem.version import __version__

# public name -> (module, attribute); no module of polysem has one of these names
_API = {
    "Store": ("polysem.query.store", "Store"),
    "screen": ("polysem.method.concepts", "screen"),
    "layers": ("polysem.ingest.models", "model_layers"),
    "compact": ("polysem.query.compact", "compact"),
    "check": ("polysem.query.store", "check"),
    "wordnet": ("polysem.method.wordnet", "compute_class_similarity"),
    "plot_wordnet": ("polysem.reporting", "plot_wordnet"),
    "runs": ("polysem.query.run_records", "runs"),
    "run_record": ("polysem.query.run_records", "run_record"),
    "visualize": ("polysem.method.visualize", "visualize"),
    "report": ("polysem.reporting", "write_report"),
    "disentangle": ("polysem.method.runs", "disentangle"),
    "load_model": ("polysem.method.runs", "load_model"),
    "evaluate": ("polysem.reporting", "evaluate"),
    "channel_concepts": ("polysem.method.concepts", "channel_concepts"),
    "verify": ("polysem.method.verification", "verify"),
    "use": ("polysem.ingest.objects", "use"),
}

__all__ = ["Store", "__version__", "channel_concepts", "check", "compact", "disentangle", "evaluate", "ingest",
           "layers", "load_model", "plot_wordnet", "report", "run_record", "runs", "screen", "use", "verify",
           "visualize", "wordnet"]


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
