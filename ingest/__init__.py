"""Images become numbers: run a CNN over an image folder (or a torch Dataset) and write attributions as Parquet.

This package is also the function `polysem.ingest(store, data, split, ...)`: calling the
module runs `polysem.ingest.run.ingest`, so the name means one thing however it was imported.
"""

import inspect
import sys
import types

from polysem.ingest.run import IngestSummary
from polysem.ingest.run import ingest as _ingest


class _IngestModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> IngestSummary:
        return _ingest(*args, **kwargs)


sys.modules[__name__].__class__ = _IngestModule
ingest = _ingest
# what help(), IPython's `?` and editors show for the module called as the function: its parameters and text
__signature__ = inspect.signature(_ingest)
__doc__ = f"{__doc__}\n{_ingest.__name__}{__signature__}\n\n{inspect.getdoc(_ingest)}\n"
__all__ = ["IngestSummary", "ingest"]
