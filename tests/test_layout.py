"""Compaction: class-ordered files that DuckDB prunes by class, rows unchanged, atomic and resumable."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest
from polysem.ingest.writer import list_column
from polysem.query import Store, layout
from polysem.query import compact as compaction
from polysem.query.compact import compact
from polysem.query.meta import REQUIRED_META, SCHEMA_VERSION, write_meta

from polysem.util import atomic

CLASSES, PER_CLASS, CHANNELS = 10, 60, 256


def write_parts(store: Path, n_parts_per_rank: int = 3, ranks: int = 2, seed: int = 0) -> None:
    """Parts as torchrun ranks write them: each rank every n-th image, 100 rows per part, classes mixed."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(CLASSES, dtype=np.int32), PER_CLASS)
    ids = np.arange(len(targets))
    for rank in range(ranks):
        mine = ids[rank::ranks]
        for chunk in np.array_split(mine, n_parts_per_rank):
            n = len(chunk)
            atomic.write_atomic(pa.Table.from_arrays([
                pa.array(chunk, pa.int64()), pa.array(["train"] * n), pa.array([f"img{i}.png" for i in chunk]),
                pa.array(targets[chunk]), pa.array(targets[chunk]), pa.array(np.zeros(n, np.int32)),
                pa.array(rng.normal(size=n).astype(np.float32)),
                list_column(rng.random((n, CHANNELS), dtype=np.float32)),
                list_column(rng.random((n, 8), dtype=np.float32)), pa.array(np.ones(n, np.int32)),
                pa.nulls(n, pa.float64()),
            ], schema=layout.SAMPLES), layout.new_part_path(store, "samples", "train", rank))


@pytest.fixture
def parts_store(tmp_path):
    path = tmp_path / "store"
    path.mkdir()
    layout.write_schema_files(path)
    atomic.write_atomic(pa.Table.from_pylist([{"class_id": c, "folder": f"c{c}", "name": f"class {c}", "wnid": None,
                                               "logit": c} for c in range(CLASSES)], schema=layout.CLASSES),
                        path / "classes.parquet")
    atomic.write_atomic(layout.LAYER_WEIGHTS.empty_table(), path / "layer_weights.parquet")
    write_parts(path)
    with Store(path).transaction(create=True) as tx:  # metadata a first ingest would record: a complete store
        write_meta(tx.conn, {key: "test" for key in REQUIRED_META} | {"schema_version": SCHEMA_VERSION,
                                                                    "layer_shape": {"out_channels": 4, "in_channels": 3}})
    return Store(path)


def rows(store: Store):
    return store.sql("SELECT * FROM samples ORDER BY image_id").to_pylist()


def profile(store: Store, where: str = "") -> dict:
    """DuckDB's profiler on a scan of the attributions: bytes read and row groups scanned. On a plain
    read-only connection to the catalog: user SQL's connection is locked, so it cannot write a profile."""
    import duckdb

    out = store.path.parent / "profile.json"
    with duckdb.connect(str(store.catalog_path), read_only=True) as conn:
        conn.execute("SET file_search_path = ?", [str(store.path)])
        conn.execute("PRAGMA enable_profiling = 'json'")
        conn.execute(f"PRAGMA profiling_output = '{out}'")
        conn.execute(f"SELECT sum(list_sum(attribution)) FROM samples WHERE split = 'train' {where}").fetchall()
        conn.execute("PRAGMA disable_profiling")
    report = json.loads(out.read_text())
    return {"bytes": report["io"]["total_bytes_read"], "row_groups": report["query"]["total_row_groups_scanned"]}


def test_compaction_keeps_rows_and_orders_files_by_class(parts_store):
    before = rows(parts_store)
    [summary] = compact(parts_store)
    assert summary.rows_rewritten == CLASSES * PER_CLASS and summary.files_before == 6
    assert rows(parts_store) == before
    files = sorted((parts_store.path / "samples" / "train").rglob("*.parquet"))
    assert files and all(f.name.startswith("compact-") for f in files)
    for f in files:
        meta = pq.ParquetFile(f).metadata
        column = meta.schema.names.index("target")
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(column).statistics
            assert stats.min == stats.max  # one class per row group
        table = pq.read_table(f, columns=["target", "image_id"])
        assert table.to_pylist() == sorted(table.to_pylist(), key=lambda r: (r["target"], r["image_id"]))
    assert compact(parts_store)[0].rows_rewritten == 0  # nothing new: nothing rewritten


@pytest.mark.parametrize("predicate", ["AND target IN (3, 7)", "AND list_contains([3, 7], target)"])
def test_two_of_ten_classes_read_their_share_after_compaction(parts_store, predicate):
    compact(parts_store)
    whole, two = profile(parts_store), profile(parts_store, predicate)
    assert two["row_groups"] == 2
    assert two["bytes"] <= 1.5 * 0.2 * whole["bytes"], (two, whole)


def test_new_parts_after_compaction_are_compacted_incrementally(parts_store, tmp_path):
    compact(parts_store)
    first = set((parts_store.path / "samples" / "train").rglob("*.parquet"))
    extra = tmp_path / "extra"
    extra.mkdir()
    write_parts(extra, 1, 1, seed=5)
    for part in (extra / "samples" / "train").rglob("*.parquet"):  # new image ids: shift them past the old ones
        table = pq.read_table(part)
        table = table.set_column(0, "image_id", pa.compute.add(table.column("image_id"), 10_000))
        atomic.write_atomic(table, layout.new_part_path(parts_store.path, "samples", "train", 0))
    [summary] = compact(parts_store)
    assert summary.rows_rewritten == 2 * CLASSES * PER_CLASS  # the small compacted file joins the new rows
    assert len(rows(parts_store)) == 2 * CLASSES * PER_CLASS
    assert not first & set((parts_store.path / "samples" / "train").rglob("*.parquet"))


@pytest.mark.parametrize("kill_at", ["_write_class_ordered", "_exchange", "rmtree", "second_rename"])
def test_killed_compaction_resumes_to_identical_rows(parts_store, monkeypatch, kill_at):
    before = rows(parts_store)

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed

    if kill_at == "rmtree":  # after the swap, before the old files are gone
        monkeypatch.setattr(compaction.shutil, "rmtree", die)
    elif kill_at == "second_rename":  # the fallback without renameat2, between its renames
        monkeypatch.setattr(compaction.ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(AttributeError()))
        real_rename, calls = compaction.os.rename, []

        def rename(a, b):
            calls.append(a)
            if len(calls) == 2:
                raise Killed
            real_rename(a, b)

        monkeypatch.setattr(compaction.os, "rename", rename)
    else:
        monkeypatch.setattr(compaction, kill_at, die)
    with pytest.raises(Killed):
        compact(parts_store)
    if kill_at != "second_rename":
        assert rows(parts_store) == before  # the store is whole at the moment of the kill
    monkeypatch.undo()
    compact(parts_store)
    assert rows(parts_store) == before
    assert all(f.name.startswith("compact-") for f in (parts_store.path / "samples" / "train").rglob("*.parquet"))
    assert not any((parts_store.path / ".compact" / "samples").iterdir())


def test_compact_refuses_a_split_being_ingested_and_an_unknown_split(parts_store, cli):
    from polysem.errors import StoreBusy, StoreError

    held = compaction.lock_split(parts_store.path, "train")
    try:
        with pytest.raises(StoreBusy, match="another ingest of split 'train'"):
            compact(parts_store, "train")
    finally:
        held.close()
    with pytest.raises(StoreError, match="no split 'val'"):
        compact(parts_store, "val")
    result = cli("compact", "--split", "train", "--store", parts_store.path)
    assert result.exit_code == 0 and "train: 600 rows rewritten, 6 files -> 1" in result.output


def positive_sums(attribution) -> np.ndarray:
    """Ineq. 2's denominator by numpy: the positive entries of each float32 list, summed in float64."""
    return np.array([np.sum(a[a > 0], dtype=np.float64) for a in map(np.asarray, attribution)])


def test_compaction_stores_positive_sum_and_the_view_computes_it_where_a_file_lacks_it(parts_store):
    folder = parts_store.path / "samples" / "train"
    old_schema = pa.schema([f for f in layout.SAMPLES if f.name != "positive_sum"])  # a file of format 5 or older
    old = pq.read_table(next(folder.glob("part-*.parquet"))).select(old_schema.names)
    old = old.set_column(0, "image_id", pa.array(np.arange(len(old)) + 10_000, pa.int64()))
    atomic.write_atomic(old.cast(old_schema), folder / "part-r000-oldformat0000.parquet")
    parts = [pq.read_table(f) for f in folder.glob("part-*.parquet")]
    assert all("positive_sum" not in t.column_names or t.column("positive_sum").null_count == len(t) for t in parts)

    viewed = parts_store.sql("SELECT image_id, attribution, positive_sum FROM samples ORDER BY image_id")
    expected = positive_sums(viewed.column("attribution").to_pylist())
    assert np.allclose(viewed.column("positive_sum").to_numpy(), expected, rtol=1e-12, atol=0)

    compact(parts_store)
    stored = pa.concat_tables(pq.read_table(f, columns=["image_id", "positive_sum"]) for f in folder.rglob("*.parquet"))
    stored = stored.sort_by("image_id")
    assert stored.column("positive_sum").null_count == 0  # every file compacted carries it, the old one too
    assert stored.column("image_id").to_pylist() == viewed.column("image_id").to_pylist()
    # stored by the same macro the view used: the same doubles, not just close ones
    assert stored.column("positive_sum").to_pylist() == viewed.column("positive_sum").to_pylist()


def test_the_documented_query_finds_a_forged_positive_sum(parts_store):
    """docs/reliability.md, Known limits: a received store's stored denominators are checked by one query."""
    query = "SELECT count(*) AS n FROM samples WHERE positive_sum IS DISTINCT FROM positive_sum(attribution)"
    limits = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    assert "positive_sum IS DISTINCT FROM positive_sum(attribution)" in limits
    compact(parts_store)
    assert parts_store.sql(query).column("n")[0].as_py() == 0
    [first, *_] = sorted((parts_store.path / "samples" / "train").rglob("compact-*.parquet"))
    table = pq.read_table(first)
    forged = pyarrow.compute.multiply(table.column("positive_sum"), 2.0)
    atomic.write_atomic(table.set_column(table.schema.get_field_index("positive_sum"), "positive_sum", forged), first)
    assert parts_store.sql(query).column("n")[0].as_py() == len(table)
