"""The analysis store: DuckDB catalog over Parquet, the SQL of `sql/`, queries and exports."""

from polysem.query.store import Store, default_store_path

__all__ = ["Store", "default_store_path"]
