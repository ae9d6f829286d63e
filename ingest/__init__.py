"""Images become numbers: run a CNN over an image folder (or a torch Dataset) and write attributions as Parquet.

This package is also the function `polysem.ingest(store, data, split, ...)`: calling the
module runs `polysem.ingest.run.ingest`, so the name means one thing however it was imported.
"""

import sys
import types

from polysem.ingest.run import IngestSummary
from polysem.ingest.run import ingest as _ingest


class _IngestModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> IngestSummary:
        return _ingest(*args, **kwargs)


sys.modules[__name__].__class__ = _IngestModule
ingest = _ingest
__all__ = ["IngestSummary", "ingest"]
