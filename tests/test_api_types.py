"""Every argument of the public API is checked before anything runs (README "Arguments"): a wrong type is an
ArgumentError (a PolysemError and a TypeError) naming the parameter and the type expected, a value out of range
an ArgumentRange (a PolysemError and a ValueError) naming the range; the store stays byte-identical. The
command line passes its options through the same checks: one `Error:` line naming the flag and the range."""

import inspect
import math
import os

import numpy as np
import pytest

import polysem
from polysem.errors import ArgumentError, ArgumentRange, PolysemError
from polysem.query import Store
from tests.helpers import assert_refused, snapshot

BIG = 99999999999999999999  # more than a 63-bit integer


@pytest.fixture(scope="module")
def built(store_cache, tmp_path_factory):
    """One copy of a store with a run for the whole module: every call here must leave it byte-identical."""
    return store_cache.copy("opponent-colour-run", tmp_path_factory.mktemp("types") / "store")


def _ctx(manager):
    with manager:
        pass


def _visualize(**kw):
    from polysem.method.visualize import visualize

    return visualize(**kw)


def _report(**kw):
    from polysem.reporting import write_report

    return write_report(**kw)


# public function -> call(store, run_id, images, out, **arguments) with valid values for what is not given
CALLS = {
    "Store": lambda s, r, d, o, **kw: Store(**{"path": s, **kw}),
    "Store.sql": lambda s, r, d, o, **kw: Store(s).sql(**{"query": "SELECT 1", **kw}),
    "Store.run": lambda s, r, d, o, **kw: Store(s).run(**{"name": "class_list", **kw}),
    "Store.table": lambda s, r, d, o, **kw: Store(s).table(**{"name_or_query": "runs", **kw}),
    "Store.export": lambda s, r, d, o, **kw: Store(s).export(**{"name_or_query": "runs", "out": o / "x.csv", **kw}),
    "Store.meta": lambda s, r, d, o, **kw: Store(s).meta(**kw),
    "Store.for_layer": lambda s, r, d, o, **kw: Store(s).for_layer(**kw),
    "Store.check": lambda s, r, d, o, **kw: Store(s).check(**kw),
    "Store.check_outside": lambda s, r, d, o, **kw: Store(s).check_outside(**{"out": o / "x.csv", **kw}),
    "Store.connect": lambda s, r, d, o, **kw: _ctx(Store(s).connect(**kw)),
    "Store.transaction": lambda s, r, d, o, **kw: _ctx(Store(s).transaction(**kw)),
    "ingest": lambda s, r, d, o, **kw: polysem.ingest(**{"store": s, "data": d, "progress": False,
                                                        "num_workers": 0, **kw}),
    "screen": lambda s, r, d, o, **kw: polysem.screen(**{"store": s, **kw}),
    "channel_concepts": lambda s, r, d, o, **kw: polysem.channel_concepts(**{"store": s, "record": False, **kw}),
    "disentangle": lambda s, r, d, o, **kw: polysem.disentangle(**{
        "store": s, "channel": 0, "concept1": ["green"], "concept2": ["red"], "progress": False, **kw}),
    "load_model": lambda s, r, d, o, **kw: polysem.load_model(**{"store": s, "run_id": r, **kw}),
    "evaluate": lambda s, r, d, o, **kw: polysem.evaluate(**{"store": s, "run_id": r, **kw}),
    "verify": lambda s, r, d, o, **kw: polysem.verify(**{"store": s, "run_id": r, "progress": False, **kw}),
    "report": lambda s, r, d, o, **kw: _report(**{"store": s, "out": o / "report", **kw}),
    "check": lambda s, r, d, o, **kw: polysem.check(**{"store": s, **kw}),
    "compact": lambda s, r, d, o, **kw: polysem.compact(**{"store": s, **kw}),
    "layers": lambda s, r, d, o, **kw: polysem.layers(**{"model_spec": "tests.models:tiny_net", **kw}),
    "plot_wordnet": lambda s, r, d, o, **kw: polysem.plot_wordnet(**{"store": s, "out": o / "w.png", **kw}),
    "run_record": lambda s, r, d, o, **kw: polysem.run_record(**{"store": s, "run_id": r, **kw}),
    "runs": lambda s, r, d, o, **kw: polysem.runs(**{"store": s, **kw}),
    "wordnet": lambda s, r, d, o, **kw: polysem.wordnet(**{"store": s, **kw}),
    "visualize": lambda s, r, d, o, **kw: _visualize(**{"store": s, "run_id": r, "steps": 1, "size": 8,
                                                        "progress": False, **kw}),
    "use": lambda s, r, d, o, **kw: polysem.use(**{"store": s, **kw}),
}

WRONG, RANGE = ArgumentError, ArgumentRange
# (function, arguments, the parameter named, the error, a fragment of the message)
CASES = [
    # Store and its methods
    ("Store", {"path": 123}, "path", WRONG, "a path (str or pathlib.Path) or None, got int 123"),
    ("Store", {"trust_code": 5}, "trust_code", WRONG, "a path"),
    ("Store", {"layer": 5}, "layer", WRONG, "text (str) or None"),
    ("Store", {"layer": ["probe"]}, "layer", WRONG, "text (str) or None"),
    ("Store", {"trust_code": ["/tmp", 5]}, "trust_code", WRONG, "a path"),
    ("Store.sql", {"query": None}, "query", WRONG, "text (str), got None"),
    ("Store.sql", {"params": "x"}, "params", WRONG, "a list (for ?), a dict (for $name) or None"),
    ("Store.run", {"name": 5}, "name", WRONG, "text (str)"),
    ("Store.table", {"name_or_query": 5}, "name_or_query", WRONG, "text (str)"),
    ("Store.table", {"params": 5}, "params", WRONG, "a list"),
    ("Store.export", {"name_or_query": None}, "name_or_query", WRONG, "text (str)"),
    ("Store.export", {"out": 5}, "out", WRONG, "a path"),
    ("Store.export", {"params": 1.5}, "params", WRONG, "a list"),
    ("Store.export", {"fmt": 5}, "fmt", WRONG, "text (str) or None"),
    ("Store.meta", {"require_complete": "yes"}, "require_complete", WRONG, "True or False (bool)"),
    ("Store.meta", {"any_layer": 1}, "any_layer", WRONG, "True or False (bool)"),
    ("Store.for_layer", {"layer": 5}, "layer", WRONG, "text (str) or None"),
    ("Store.check", {"repair": 1}, "repair", WRONG, "True or False (bool), got int 1"),
    ("Store.check_outside", {"out": None}, "out", WRONG, "a path"),
    ("Store.check_outside", {"folder": 1}, "folder", WRONG, "True or False"),
    ("Store.check_outside", {"stdout": "no"}, "stdout", WRONG, "True or False"),
    ("Store.check_outside", {"name": 5}, "name", WRONG, "text (str)"),
    ("Store.connect", {"write": 1}, "write", WRONG, "True or False"),
    ("Store.connect", {"create": "x"}, "create", WRONG, "True or False"),
    ("Store.transaction", {"create": 0}, "create", WRONG, "True or False"),
    # ingest
    ("ingest", {"store": 123}, "store", WRONG, "a path"),
    ("ingest", {"data": None}, "data", WRONG,
     "a folder path (str or pathlib.Path) or a map-style torch Dataset, got None"),
    ("ingest", {"data": b"images"}, "data", WRONG, "a folder path"),
    ("ingest", {"split": 5}, "split", WRONG, "text (str)"),
    ("ingest", {"model": 5}, "model", WRONG, "text (str), a torch.nn.Module or None, got int 5"),
    ("ingest", {"weights": 5}, "weights", WRONG, "text (str) or None"),
    ("ingest", {"layer": 5}, "layer", WRONG, "text (str) or a list of text, got int 5"),
    ("ingest", {"layer": [5]}, "layer", WRONG, "text (str)"),
    ("ingest", {"layer": []}, "layer", RANGE, "a list of at least one"),
    ("ingest", {"layer": ["probe", "probe"]}, "layer", RANGE, "named once each, got probe twice"),
    ("ingest", {"positions": 5}, "positions", WRONG, "text (str) or None"),
    ("ingest", {"positions": "first"}, "positions", RANGE, "one of all, cls, patch"),
    ("ingest", {"transform": len}, "transform", WRONG, "must be the text MODULE:NAME of a callable"),
    ("ingest", {"batch_size": "8"}, "batch_size", WRONG, "a whole number (int), got str '8'"),
    ("ingest", {"batch_size": 8.0}, "batch_size", WRONG, "a whole number (int), got float 8.0"),
    ("ingest", {"batch_size": 0}, "batch_size", RANGE, "from 1 to 65536, got 0"),
    ("ingest", {"batch_size": 10**6}, "batch_size", RANGE, "from 1 to 65536"),
    ("ingest", {"num_workers": True}, "num_workers", WRONG, "a whole number (int) or None, got bool True"),
    ("ingest", {"num_workers": 10**4}, "num_workers", RANGE, f"from 0 to {4 * len(os.sched_getaffinity(0))}"),
    ("ingest", {"num_workers": -1}, "num_workers", RANGE, "from 0 to"),
    ("ingest", {"threads": 1.5}, "threads", WRONG, "a whole number (int) or None"),
    ("ingest", {"threads": 10**4}, "threads", RANGE, "from 1 to"),
    ("ingest", {"threads": 0}, "threads", RANGE, "from 1 to"),
    ("ingest", {"device": 0}, "device", WRONG, "text (str)"),
    ("ingest", {"limit": 1.5}, "limit", WRONG, "a whole number (int) or None, got float 1.5"),
    ("ingest", {"limit": 0}, "limit", RANGE, "from 1 to 2**63 - 1, got 0"),
    ("ingest", {"limit": BIG}, "limit", RANGE, f"from 1 to 2**63 - 1, got {BIG}"),
    ("ingest", {"classes": "0,1"}, "classes", WRONG, "a list of class ids (int), got str '0,1'"),
    ("ingest", {"classes": [0, True]}, "classes", WRONG, "got bool True in it"),
    ("ingest", {"classes": [0, "1"]}, "classes", WRONG, "got str '1' in it"),
    ("ingest", {"classes": 1}, "classes", WRONG, "a list of class ids"),
    ("ingest", {"classes": [-1]}, "classes", RANGE, "from 0 to 2**63 - 1, got -1 (a class id)"),
    ("ingest", {"rows_per_part": "1"}, "rows_per_part", WRONG, "a whole number (int)"),
    ("ingest", {"rows_per_part": 2**21}, "rows_per_part", RANGE, "from 1 to 1048576"),
    ("ingest", {"progress": 1}, "progress", WRONG, "True or False"),
    ("ingest", {"compact": "no"}, "compact", WRONG, "True or False"),
    ("ingest", {"max_pixels": 1.5}, "max_pixels", WRONG, "a whole number (int)"),
    ("ingest", {"max_pixels": 0}, "max_pixels", RANGE, "from 1 to 2**63 - 1"),
    ("ingest", {"decode": 5}, "decode", WRONG, "text (str) or None, got int 5"),
    ("ingest", {"decode": "gpu"}, "decode", RANGE, "pil or tensor, got str 'gpu'"),
    ("ingest", {"rank_timeout": "30"}, "rank_timeout", WRONG, "a number (int or float), got str '30'"),
    ("ingest", {"target": 5}, "target", WRONG, "text (str) or None, got int 5"),
    ("ingest", {"target": "argmax"}, "target", RANGE, "label (the image's class, the paper's) or predicted"),
    ("ingest", {"rank_timeout": 0}, "rank_timeout", RANGE, "in (0, 604800], got 0 seconds"),
    # screen and channel_concepts
    ("screen", {"store": 1.5}, "store", WRONG, "a path"),
    ("screen", {"tau": "0.1"}, "tau", WRONG, "a number (int or float), got str '0.1'"),
    ("screen", {"tau": 2}, "tau", RANGE, "in [0, 1], got 2"),
    ("screen", {"tau": math.nan}, "tau", RANGE, "in [0, 1], got nan"),
    ("screen", {"p": None}, "p", WRONG, "a number (int or float), got None"),
    ("screen", {"p": 0}, "p", RANGE, "in (0, 1], got 0"),
    ("screen", {"gamma": True}, "gamma", WRONG, "a number"),
    ("screen", {"gamma": -2}, "gamma", RANGE, "in [-1, 1], got -2"),
    ("screen", {"limit": "5"}, "limit", WRONG, "a whole number (int) or None, got str '5'"),
    ("screen", {"limit": BIG}, "limit", RANGE, f"from 1 to 2**63 - 1, got {BIG}"),
    ("screen", {"limit": 0}, "limit", RANGE, "from 1 to 2**63 - 1"),
    ("screen", {"correct_only": 1}, "correct_only", WRONG, "True or False"),
    ("channel_concepts", {"store": 1}, "store", WRONG, "a path"),
    ("channel_concepts", {"tau": [0.1]}, "tau", WRONG, "a number"),
    ("channel_concepts", {"tau": -0.1}, "tau", RANGE, "in [0, 1]"),
    ("channel_concepts", {"p": "0.5"}, "p", WRONG, "a number"),
    ("channel_concepts", {"p": 1.5}, "p", RANGE, "in (0, 1]"),
    ("channel_concepts", {"gamma": "x"}, "gamma", WRONG, "a number"),
    ("channel_concepts", {"gamma": 1.5}, "gamma", RANGE, "in [-1, 1]"),
    ("channel_concepts", {"limit": 2.0}, "limit", WRONG, "a whole number"),
    ("channel_concepts", {"limit": 2**63}, "limit", RANGE, "from 1 to 2**63 - 1"),
    ("channel_concepts", {"correct_only": "yes"}, "correct_only", WRONG, "True or False"),
    ("channel_concepts", {"record": 0}, "record", WRONG, "True or False"),
    # disentangle, load_model
    ("disentangle", {"store": 1}, "store", WRONG, "a path"),
    ("disentangle", {"channel": "0"}, "channel", WRONG, "a whole number (int), got str '0'"),
    ("disentangle", {"channel": True}, "channel", WRONG, "a whole number (int), got bool True"),
    ("disentangle", {"channel": 0.0}, "channel", WRONG, "a whole number (int), got float 0.0"),
    ("disentangle", {"channel": -1}, "channel", RANGE, "from 0 to 2**63 - 1"),
    ("disentangle", {"concept1": 1}, "concept1", WRONG, "a list of class ids or names (int or str), got int 1"),
    ("disentangle", {"concept1": "green"}, "concept1", WRONG, "a list of class ids or names"),
    ("disentangle", {"concept2": [2.5]}, "concept2", WRONG, "got float 2.5 in it"),
    ("disentangle", {"concept1": None, "concept2": None, "concepts": "12"}, "concepts", WRONG,
     "a list of concepts, each a list of class ids or names, got str '12'"),
    ("disentangle", {"concept1": None, "concept2": None, "concepts": [[1], "2"]}, "concepts", WRONG,
     "got str '2' in it"),
    ("disentangle", {"concept1": None, "concept2": None, "concepts": [[1], [True]]}, "concepts", WRONG,
     "got bool True in it"),
    ("disentangle", {"rho": "0.5"}, "rho", WRONG, "\"auto\" or a number in (0, 1] (int or float), got str '0.5'"),
    ("disentangle", {"rho": True}, "rho", WRONG, "a number (int or float), got bool True"),
    ("disentangle", {"rho": 0}, "rho", RANGE, "in (0, 1], got 0"),
    ("disentangle", {"rho": 1.5}, "rho", RANGE, "in (0, 1], got 1.5"),
    ("disentangle", {"rho": math.inf}, "rho", RANGE, "in (0, 1]"),
    ("disentangle", {"objective": 1}, "objective", WRONG, "text (str)"),
    ("disentangle", {"data_dir": 5}, "data_dir", WRONG, "a path (str or pathlib.Path) or None"),
    ("disentangle", {"force": "yes"}, "force", WRONG, "True or False"),
    ("disentangle", {"device": None}, "device", WRONG, "text (str)"),
    ("disentangle", {"batch_size": 1.5}, "batch_size", WRONG, "a whole number"),
    ("disentangle", {"batch_size": 10**6}, "batch_size", RANGE, "from 1 to 65536"),
    ("disentangle", {"progress": None}, "progress", WRONG, "True or False"),
    ("disentangle", {"tau": "0.03"}, "tau", WRONG, "a number"),
    ("disentangle", {"tau": 5}, "tau", RANGE, "in [0, 1]"),
    ("disentangle", {"p": False}, "p", WRONG, "a number"),
    ("disentangle", {"p": 0}, "p", RANGE, "in (0, 1]"),
    ("load_model", {"store": 5}, "store", WRONG, "a path"),
    ("load_model", {"run_id": 123}, "run_id", WRONG, "text (str), got int 123"),
    # evaluate, verify
    ("evaluate", {"store": 5}, "store", WRONG, "a path"),
    ("evaluate", {"run_id": 123}, "run_id", WRONG, "text (str), got int 123"),
    ("evaluate", {"tau": "0.1"}, "tau", WRONG, "a number (int or float), got str '0.1'"),
    ("evaluate", {"tau": 1.5}, "tau", RANGE, "in [0, 1], got 1.5"),
    ("evaluate", {"plots_dir": 5}, "plots_dir", WRONG, "a path"),
    ("evaluate", {"data_dir": 5}, "data_dir", WRONG, "a path"),
    ("evaluate", {"device": 5}, "device", WRONG, "text (str)"),
    ("evaluate", {"figure_format": None}, "figure_format", WRONG, "text (str)"),
    ("evaluate", {"selection": 1}, "selection", WRONG, "text (str)"),
    ("evaluate", {"progress": "yes"}, "progress", WRONG, "True or False (bool)"),
    ("verify", {"store": 5}, "store", WRONG, "a path"),
    ("verify", {"run_id": None}, "run_id", WRONG, "text (str), got None"),
    ("verify", {"tau": "x"}, "tau", WRONG, "a number"),
    ("verify", {"tau": 2}, "tau", RANGE, "in [0, 1]"),
    ("verify", {"p": "1"}, "p", WRONG, "a number"),
    ("verify", {"p": -1}, "p", RANGE, "in (0, 1]"),
    ("verify", {"gamma": "0.5"}, "gamma", WRONG, "a number"),
    ("verify", {"gamma": 3}, "gamma", RANGE, "in [-1, 1]"),
    ("verify", {"limit": 1.5}, "limit", WRONG, "a whole number (int) or None, got float 1.5"),
    ("verify", {"limit": 0}, "limit", RANGE, "from 1 to 2**63 - 1"),
    ("verify", {"data_dir": 5}, "data_dir", WRONG, "a path"),
    ("verify", {"device": 5}, "device", WRONG, "text (str)"),
    ("verify", {"batch_size": "8"}, "batch_size", WRONG, "a whole number"),
    ("verify", {"batch_size": 0}, "batch_size", RANGE, "from 1 to 65536"),
    ("verify", {"progress": 0}, "progress", WRONG, "True or False"),
    # write_report, visualize
    ("report", {"store": 5}, "store", WRONG, "a path"),
    # check, compact, layers, plot_wordnet, runs, run_record, wordnet, screen
    ("check", {"store": 5}, "store", WRONG, "a path"),
    ("check", {"repair": "yes"}, "repair", WRONG, "True or False"),
    ("compact", {"store": 5}, "store", WRONG, "a path"),
    ("compact", {"split": 5}, "split", WRONG, "text (str) or None"),
    ("layers", {"model_spec": 5}, "model_spec", WRONG, "text (str)"),
    ("layers", {"weights_spec": 5}, "weights_spec", WRONG, "text (str) or None"),
    ("layers", {"size": 16.0}, "size", WRONG, "a whole number (int)"),
    ("layers", {"size": 0}, "size", RANGE, "from 1 to 4096"),
    ("layers", {"channels": 1.0}, "channels", WRONG, "a whole number (int)"),
    ("layers", {"channels": 65}, "channels", RANGE, "from 1 to 64"),
    ("plot_wordnet", {"store": 5}, "store", WRONG, "a path"),
    ("plot_wordnet", {"out": None}, "out", WRONG, "a path"),
    ("plot_wordnet", {"tau": "x"}, "tau", WRONG, "a number"),
    ("plot_wordnet", {"tau": 2}, "tau", RANGE, "in [0, 1]"),
    ("plot_wordnet", {"p": "x"}, "p", WRONG, "a number"),
    ("plot_wordnet", {"p": 0}, "p", RANGE, "in (0, 1]"),
    ("plot_wordnet", {"gamma": "x"}, "gamma", WRONG, "a number"),
    ("plot_wordnet", {"gamma": 3}, "gamma", RANGE, "in [-1, 1]"),
    ("plot_wordnet", {"figure_format": 5}, "figure_format", WRONG, "text (str)"),
    ("runs", {"store": 5}, "store", WRONG, "a path"),
    ("run_record", {"store": 5}, "store", WRONG, "a path"),
    ("run_record", {"run_id": 5}, "run_id", WRONG, "text (str)"),
    ("wordnet", {"store": 5}, "store", WRONG, "a path"),
    ("wordnet", {"tau": "x"}, "tau", WRONG, "a number"),
    ("wordnet", {"tau": 2}, "tau", RANGE, "in [0, 1]"),
    ("wordnet", {"p": "x"}, "p", WRONG, "a number"),
    ("wordnet", {"p": 0}, "p", RANGE, "in (0, 1]"),
    ("wordnet", {"wordnet_dir": 5}, "wordnet_dir", WRONG, "a path"),
    ("screen", {"by_concept": "yes"}, "by_concept", WRONG, "True or False"),
    ("report", {"out": None}, "out", WRONG, "a path"),
    ("report", {"data_dir": 5}, "data_dir", WRONG, "a path"),
    ("report", {"device": 5}, "device", WRONG, "text (str)"),
    ("report", {"tau": "x"}, "tau", WRONG, "a number"),
    ("report", {"tau": 2}, "tau", RANGE, "in [0, 1]"),
    ("report", {"p": 0}, "p", RANGE, "in (0, 1]"),
    ("report", {"p": "1"}, "p", WRONG, "a number"),
    ("report", {"gamma": 3}, "gamma", RANGE, "in [-1, 1]"),
    ("report", {"gamma": "0.5"}, "gamma", WRONG, "a number"),
    ("report", {"figure_format": 5}, "figure_format", WRONG, "text (str)"),
    ("visualize", {"store": 5}, "store", WRONG, "a path"),
    ("visualize", {"run_id": 5}, "run_id", WRONG, "text (str) or None"),
    ("visualize", {"run_id": None, "channel": "1"}, "channel", WRONG, "a whole number (int) or None"),
    ("visualize", {"run_id": None, "channel": -1}, "channel", RANGE, "from 0 to 2**63 - 1"),
    ("visualize", {"method": 5}, "method", WRONG, "text (str)"),
    ("visualize", {"steps": 1.5}, "steps", WRONG, "a whole number"),
    ("visualize", {"steps": 0}, "steps", RANGE, "from 1 to 100000"),
    ("visualize", {"steps": 10**6}, "steps", RANGE, "from 1 to 100000"),
    ("visualize", {"size": "8"}, "size", WRONG, "a whole number"),
    ("visualize", {"size": 4}, "size", RANGE, "from 8 to 1024"),
    ("visualize", {"size": 2000}, "size", RANGE, "from 8 to 1024"),
    ("visualize", {"seed": np.float64(1)}, "seed", WRONG, "a whole number"),
    ("visualize", {"seed": -1}, "seed", RANGE, "from 0 to 2**63 - 1"),
    ("visualize", {"seed": 2**63}, "seed", RANGE, "from 0 to 2**63 - 1"),
    ("visualize", {"seeds": "0,1"}, "seeds", WRONG, "a list of whole numbers"),
    ("visualize", {"seeds": [0, -1]}, "seeds", RANGE, "from 0 to 2**63 - 1"),
    ("visualize", {"device": 5}, "device", WRONG, "text (str)"),
    ("visualize", {"data_dir": 5}, "data_dir", WRONG, "a path"),
    ("visualize", {"progress": "x"}, "progress", WRONG, "True or False"),
    # use: the objects a store was made from (ingest/objects.py)
    ("use", {"store": 5}, "store", WRONG, "a path"),
    ("use", {"model": "tests.models:colour_net"}, "model", WRONG, "a torch.nn.Module or None, got str"),
    ("use", {"data": ["train"]}, "data", WRONG, "a dict of split name -> map-style torch Dataset, or None"),
    ("use", {"data": {"train": "images"}}, "data", WRONG, "map-style torch Dataset, got str 'images' for 'train'"),
    ("use", {"data": {5: []}}, "data", WRONG, "split name (str) -> map-style torch Dataset, got int 5 as a split"),
    ("use", {"normalize": "imagenet"}, "normalize", WRONG, "(mean, std), each a list of numbers"),
    ("use", {"normalize": ([0.5], [True])}, "normalize", WRONG, "(mean, std), each a list of numbers"),
    ("use", {"normalize": ([0.5], [0])}, "normalize", RANGE, "every std above 0, got tuple ([0.5], [0])"),
    ("use", {"normalize": ([0.5, 0.5], [0.2])}, "normalize", RANGE, "of one length"),
    ("use", {"normalize": ([math.nan], [0.2])}, "normalize", RANGE, "finite"),
]
REFUSED = [case for case in CASES if case[3] is not None]


def _call(name, built, tmp_path, arguments):
    return CALLS[name](built.store, built.info["run_id"], built.images, tmp_path, **arguments)


@pytest.mark.parametrize("function, arguments, parameter, error, fragment", REFUSED,
                         ids=[f"{c[0]}-{c[2]}-{c[3].__name__}-{i}" for i, c in enumerate(REFUSED)])
def test_a_wrong_argument_is_refused_naming_it(built, tmp_path, function, arguments, parameter, error, fragment):
    before = snapshot(built.store)
    with pytest.raises(error) as raised:
        _call(function, built, tmp_path, arguments)
    assert isinstance(raised.value, PolysemError)
    assert isinstance(raised.value, TypeError if error is WRONG else ValueError)
    message = str(raised.value)
    assert message.startswith(f"`{parameter}` must be"), message
    assert fragment in message, message
    assert "\n" not in message
    assert snapshot(built.store) == before
    assert list(tmp_path.iterdir()) == []  # no output written either


def _public():
    """Every public function and Store method with the parameters a caller gives."""
    functions = {"Store": Store.__init__, "ingest": polysem.ingest.ingest}
    functions |= {name: getattr(polysem, name) for name in polysem.__all__ if name not in ("Store", "ingest",
                                                                                            "__version__")}
    for name, member in vars(Store).items():
        if not name.startswith("_") and callable(member):
            functions[f"Store.{name}"] = member
    for name, function in functions.items():
        parameters = {p.name: str(p.annotation) for p in inspect.signature(inspect.unwrap(function)).parameters.values()
                      if p.name != "self" and p.kind is not p.VAR_KEYWORD}
        yield name, parameters


def test_every_parameter_of_the_public_api_is_tried():
    """A wrong type of every parameter of every public function, and a value out of range of every numeric one."""
    public = dict(_public())
    assert {"screen", "disentangle", "evaluate", "verify", "Store.sql", "Store.export"} <= set(public)
    tried = {(c[0], c[2]) for c in REFUSED}
    untried = [f"{name}({parameter})" for name, parameters in public.items() for parameter in parameters
               if (name, parameter) not in tried and not (name.startswith("Store") and parameter == "store")]
    untried = [u for u in untried if not u.startswith(("Store.exists", "Store.require", "Store.info"))]
    assert untried == [], "add a case to CASES"
    for name, parameter in tried:
        wrong_types = [c for c in REFUSED if (c[0], c[2]) == (name, parameter) and c[3] is WRONG]
        assert wrong_types, f"{name}({parameter}) has no wrong-type case"
    ranged = {(c[0], c[2]) for c in REFUSED if c[3] is RANGE}
    numeric = {(name, parameter) for name, parameters in public.items() for parameter, annotation in parameters.items()
               if "int" in annotation.replace("ChannelRequest", "") or "float" in annotation}
    assert len(numeric) > 30 and sorted(numeric - ranged) == []


def test_arguments_of_the_wrong_kind_are_refused_and_record_nothing(built, tmp_path):
    """Strings for numbers and lists, booleans and floats for counts, None for a store or a query: each is refused
    before anything runs, and the store stays byte-identical."""
    store, run_id, images = built.store, built.info["run_id"], built.images
    before = snapshot(store)
    calls = [
        lambda: Store(123), lambda: Store(store).sql(None), lambda: polysem.screen(store, p=None),
        lambda: polysem.screen(store, limit="5"),
        lambda: polysem.disentangle(store, channel=0, concept1=1, concept2=[2]),
        lambda: polysem.evaluate(store, run_id, tau="0.1"), lambda: polysem.ingest(store, images, batch_size="8"),
        lambda: polysem.ingest(store, images, classes="0,1"), lambda: polysem.ingest(store, None),
        lambda: polysem.disentangle(store, channel=0, concepts="12"),
        lambda: polysem.disentangle(store, 0, concept1=[1], concept2=[2], rho="0.5"),
        lambda: polysem.disentangle(store, 0, concept1=[1], concept2=[2], rho=True),
        lambda: polysem.verify(store, run_id, limit=1.5), lambda: polysem.ingest(store, images, limit=1.5),
        lambda: polysem.evaluate(store, 123),
    ]
    for call in calls:
        with pytest.raises(ArgumentError):
            call()
    for call in [lambda: polysem.screen(store, limit=BIG), lambda: polysem.ingest(store, images, num_workers=10**4)]:
        with pytest.raises(ArgumentRange):
            call()
    assert snapshot(store) == before


def test_numbers_of_other_kinds_are_taken(built):
    """A numpy integer is a whole number, a numpy float a number; results are the same as with Python's."""
    store = built.store
    plain = polysem.screen(store, tau=0.03, p=0.75, gamma=0.5, limit=3)
    assert polysem.screen(store, tau=np.float32(0.03), p=np.float64(0.75), gamma=0.5, limit=np.int64(3)).equals(plain)
    assert polysem.screen(store, tau=0, p=1).num_rows >= 0  # ints are numbers; the ends of closed ranges are in


@pytest.mark.parametrize("args, fragments", [
    (["screen", "--limit", BIG], ["--limit must be from 1 to 2**63 - 1, got 99999999999999999999"]),
    (["screen", "--concepts", "--limit", 0], ["--limit must be from 1 to 2**63 - 1"]),
    (["screen", "--gamma", 2], ["--gamma must be in [-1, 1]"]),
    (["verify", "RUN", "--limit", 0], ["--limit must be from 1 to 2**63 - 1"]),
    (["verify", "RUN", "--batch-size", 100000], ["--batch-size must be from 1 to 65536"]),
    (["evaluate", "RUN", "--tau", 1.5], ["--tau must be in [0, 1], got 1.5"]),
    (["visualize", "RUN", "--steps", 10**6], ["--steps must be from 1 to 100000"]),
    (["visualize", "--channel", -1], ["--channel must be from 0 to 2**63 - 1"]),
    (["disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--batch-size", 0],
     ["--batch-size must be from 1 to 65536"]),
    (["disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--rho", "nan"], ["--rho must be in (0, 1]"]),
    (["disentangle", "--channel", 0, "--concept1", 1, "--concept2", 2, "--rho", "half"], ["bad --rho 'half'"]),
    (["disentangle", "--from-screen", "--limit", 0], ["--limit must be from 1 to 2**63 - 1"]),
    (["ingest", "IMAGES", "--num-workers", 10**4], ["--num-workers must be from 0 to"]),
    (["ingest", "IMAGES", "--threads", 10**4], ["--threads must be from 1 to"]),
    (["ingest", "IMAGES", "--limit", BIG], ["--limit must be from 1 to 2**63 - 1"]),
    (["ingest", "IMAGES", "--max-pixels", BIG], ["--max-pixels must be from 1 to 2**63 - 1"]),
    (["ingest", "IMAGES", "--decode", "nvjpeg"], ["--decode must be pil or tensor, got str 'nvjpeg'"]),
], ids=lambda value: None)
def test_the_command_line_names_the_flag_and_the_range(cli, built, args, fragments):
    before = snapshot(built.store)
    args = [built.info["run_id"] if a == "RUN" else built.images if a == "IMAGES" else a for a in args]
    assert_refused(cli(*args, "--store", built.store), *fragments)
    assert snapshot(built.store) == before


def test_polysem_ingest_shows_the_functions_parameters_and_text():
    """`polysem.ingest` is the package, called as the function: help(), IPython's `?` and editors read its
    signature and docstring, which are the function's."""
    import inspect

    from polysem.ingest.run import ingest

    assert inspect.signature(polysem.ingest) == inspect.signature(ingest)
    assert {"model", "layer", "transform", "positions"} <= set(inspect.signature(polysem.ingest).parameters)
    assert inspect.getdoc(ingest) in polysem.ingest.__doc__
