"""Images become numbers: run a CNN over an image folder and write attributions as Parquet."""

from ingest.run import IngestSummary, ingest

__all__ = ["ingest", "IngestSummary"]
