"""Typed errors of polysem. The CLI turns each into one `Error: ...` line and exit code 2."""


class PolysemError(Exception):
    """Bad input or a state the user can fix; the message names the problem and the fix."""


class StoreError(PolysemError):
    """The store is missing, locked, or holds something other than what was asked for."""


class StoreMismatch(StoreError):
    """An ingest asked for another model, weights, layer or transform than the store holds."""


class LayerChoice(StoreError):
    """The store holds several layers and the command was not told which one (`layer`, `--layer`)."""


class StoreBusy(StoreError):
    """Another process holds the store's catalog for writing."""


class ObjectsNeeded(StoreError):
    """A store made from Python objects (a model object, a Dataset: ingest/objects.py) needs them in this
    process: `what` it needs, and the `polysem.use` arguments that give it (`given`). The command line, which
    has no such objects, names the Python calls instead."""

    def __init__(self, what: str, given: str):
        self.what, self.given = what, given
        super().__init__(f"{what}, which only Python can give: call polysem.use(store, {given}) in this process "
                         "first")


class ModelError(PolysemError):
    """The model, its weights, the layer or the transform cannot be resolved."""


class DataError(PolysemError):
    """The image folder, a split or a class is missing or malformed."""


class QueryError(PolysemError):
    """A query is refused or fails."""


class RunError(PolysemError):
    """A disentanglement run or its evaluation cannot proceed."""


class DiskFull(PolysemError):
    """A write found no space left on its disk; the message names the file or store, the space and the fix."""


class NotWritable(PolysemError):
    """A write was refused by the file system (permissions, an immutable or read-only folder); the message
    names the folder and the fix."""


class ArgumentError(PolysemError, TypeError):
    """An argument of the wrong type: the message names the parameter and the type expected."""


class ArgumentRange(PolysemError, ValueError):
    """An argument outside its range: the message names the parameter and the range."""


class RankError(PolysemError):
    """A torchrun rank did not join the others in time, or stopped: the message names the ranks and the fix."""


class EmptyAnswer(UserWarning):
    """An API call answered with no row; the warning's text says why, in the CLI's words (a notebook shows it
    under the cell)."""


class ThresholdWarning(UserWarning):
    """A threshold far from the paper's setting for this layer (`polysem.method.concepts.tau_reading`)."""
