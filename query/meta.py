"""The store's metadata (`store_meta`): what it holds, which format it is in, and the migrations
that bring an older format to this one (`prepare_catalog`)."""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb

from polysem.errors import StoreError
from polysem.query.sandbox import SANDBOX
from polysem.query.sqlfiles import Statements, apply_blocks, load_blocks, load_migrations, sql_digest
from polysem.version import __version__

__all__ = [
    "DATASET_TRANSFORM",
    "DECODERS",
    "DEFAULT_DECODE",
    "DEFAULT_POSITIONS",
    "DEFAULT_TARGET",
    "POSITIONS",
    "REQUIRED_META",
    "SCHEMA_VERSION",
    "TARGETS",
    "IncompleteStore",
    "catalog_created",
    "check_layer_name",
    "dataset_root_key",
    "fill_template",
    "layer_positions",
    "layer_shape_key",
    "meta_complete",
    "polysem_objects",
    "prepare_catalog",
    "read_meta",
    "recorded_decode",
    "recorded_target",
    "refuse_foreign_objects",
    "schema_version",
    "set_aside_foreign_objects",
    "stored_digest",
    "stored_layers",
    "write_meta",
]

# The store format this polysem writes; sql/migrations.sql brings older ones here.
# 2: classes.logit, samples.predicted_logit, per-split dataset roots; 3: schema_version, act_concepts;
# 4: evaluations.selection; 5: visualizations.failure, image nullable; 6: samples.positive_sum (stored by compaction);
# 7: several layers (samples/<split>/layer=<name>/, layer_shape:<name>, layer_weights-<name>.parquet, runs.layer).
SCHEMA_VERSION = 7
# the metadata a store must hold to count as created (written in one transaction by the first ingest)
REQUIRED_META = ("schema_version", "model", "weights", "weights_sha256", "layer", "layer_shape", "transform",
                 "polysem_version", "created_at")

# How ingest decodes images (`decode`, ingest/decode.py). An optional key, like the code folders: a store made
# before it existed has none and was decoded with pil, so no migration writes it.
DECODERS = ("pil", "tensor")
DEFAULT_DECODE = "pil"


# The transform a store made from torch Datasets records (ingest/objects.py): their items are the model's inputs.
DATASET_TRANSFORM = "dataset"

# Which logit ingest attributes each image to (`target`): its label's, as the paper does, or its predicted one.
# Optional like `decode`: a store without the key was made with the label.
TARGETS = ("label", "predicted")
DEFAULT_TARGET = "label"
# Which positions of a Linear layer count (`ingest.units`): all, the class token (the first of dim 1) or the
# patch tokens (the rest of dim 1). Recorded in the layer's shape; a conv counts all.
POSITIONS = ("all", "cls", "patch")
DEFAULT_POSITIONS = "all"


def _recorded_choice(meta: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    """An optional key of closed choices: its value, or `default` for a store made before the key existed. Any
    other value is refused: polysem never writes one, so the catalog was edited."""
    value = meta.get(key, default)
    if value not in choices:
        raise StoreError(f"the store's metadata names {key} {value!r}, which is neither of {', '.join(choices)}: "
                         "polysem never writes that; ingest into a new `store`, or restore the catalog from a backup")
    return value


def layer_positions(layer_shape: dict[str, Any] | None) -> str:
    """The positions a store's layer counts, from its recorded layer shape (a conv records none: all)."""
    return _recorded_choice(layer_shape or {}, "positions", POSITIONS, DEFAULT_POSITIONS)


def recorded_target(meta: dict[str, Any]) -> str:
    """The logit a store's attributions were taken for: its `target` key, or label for a store without one."""
    return _recorded_choice(meta, "target", TARGETS, DEFAULT_TARGET)


def recorded_decode(meta: dict[str, Any]) -> str:
    """The decoder a store's images went through: its `decode` key, or pil for a store without one."""
    return _recorded_choice(meta, "decode", DECODERS, DEFAULT_DECODE)


def layer_shape_key(layer: str) -> str:
    """Each layer after the first has its shape in a key of its own, so ingests adding two layers never overwrite
    each other's; the first layer's is `layer_shape` (with its name in `layer`), as in every format."""
    return f"layer_shape:{layer}"


LAYER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a dotted module name: a folder and file name as it is


def check_layer_name(layer: str) -> None:
    """A layer's name names its folder (samples/<split>/layer=<name>/) and weight file: refused when it could not."""
    if not LAYER_NAME.fullmatch(layer) or len(layer) > 200:
        raise StoreError(f"layer name {layer!r} has a character outside letters, digits, '_', '.' and '-' (or is "
                         "longer than 200): polysem names the layer's folder after it; rename the module or wrap the "
                         "model")


def dataset_root_key(split: str) -> str:
    """Each split's dataset root is its own key, so ingests of two splits never overwrite each other's."""
    return f"dataset_root:{split}"


class IncompleteStore(StoreError):
    """The store's first ingest stopped before its metadata was committed: the next ingest completes it."""

    def __init__(self, store: object):
        super().__init__(f"the store {store} was never completely created (its first ingest stopped); "
                         "run `polysem ingest` again to complete it")


def meta_complete(meta: dict[str, Any]) -> bool:
    return all(key in meta for key in REQUIRED_META)


def catalog_created(conn: duckdb.DuckDBPyConnection) -> bool:
    """Did a first ingest commit this catalog's metadata? False for a catalog with no tables, with some
    tables but no `store_meta`, or with part of the metadata. Reads nothing but `store_meta`, so it
    answers before any view (which needs the store's Parquet files) is defined."""
    meta = read_meta(conn)
    if "schema_version" not in meta and "format" in meta:  # format 2 named it `format`
        meta["schema_version"] = meta["format"]
    return meta_complete(meta)


def stored_digest(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The digest of the SQL that defined the catalog's views and macros (None in a new catalog)."""
    try:
        return Statements(conn).meta_value(key="sql_digest")
    except duckdb.CatalogException:
        return None


def read_meta(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """store_meta as a dict; the per-split roots are gathered into `dataset_roots` {split: folder}, every layer's
    shape into `layers` {name: shape} (the first layer, `layer`, first).
    A catalog without a store_meta table (a first ingest stopped before creating it) has none."""
    meta: dict[str, Any] = {}
    roots: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    try:
        rows = Statements(conn).store_meta_rows().to_pylist()
    except duckdb.CatalogException:
        rows = []
    for key, value in ((row["key"], row["value"]) for row in rows):
        try:
            decoded = json.loads(value) if value is not None else None
        except (TypeError, ValueError):
            raise StoreError(f"the store's metadata holds {key} = {value!r}, which is not JSON: polysem never writes "
                             "that; restore the catalog from a backup, or ingest into a new `store`") from None
        if key.startswith("dataset_root:"):
            roots[key.partition(":")[2]] = decoded
        elif key.startswith("layer_shape:"):
            shapes[key.partition(":")[2]] = decoded
        else:
            meta[key] = decoded
    meta["dataset_roots"] = roots
    for name in [*shapes, *([meta["layer"]] if "layer" in meta else [])]:  # they name folders and files
        if not isinstance(name, str) or not LAYER_NAME.fullmatch(name) or len(name) > 200:
            raise StoreError(f"the store's metadata names a layer {name!r}, which is not a name polysem writes (its "
                             "folder would lie elsewhere); restore the catalog from a backup, or ingest into a new "
                             "`store`")
    for key, shape in [*((f"layer_shape:{n}", v) for n, v in shapes.items()),
                       *((("layer_shape", meta["layer_shape"]),) if "layer_shape" in meta else ())]:
        if not (isinstance(shape, dict) and all(isinstance(shape.get(k), int) and not isinstance(shape.get(k), bool)
                                                and shape[k] > 0 for k in ("out_channels", "in_channels"))):
            raise StoreError(f"the store's metadata holds {key} = {json.dumps(shape)[:80]}, not a layer's shape "
                             "(out_channels and in_channels, whole numbers): polysem never writes that; restore the "
                             "catalog from a backup, or ingest into a new `store`")
    # every layer, the first first: `layer` / `layer_shape` (every format), then the others by name
    meta["layers"] = {meta["layer"]: meta.get("layer_shape")} if "layer" in meta else {}
    meta["layers"].update((name, shape) for name, shape in sorted(shapes.items()) if name not in meta["layers"])
    return meta


def stored_layers(conn: duckdb.DuckDBPyConnection) -> tuple[str | None, list[str]]:
    """(the first layer, every layer's name) of a catalog; (None, []) before a first ingest recorded any."""
    try:
        layers = list(read_meta(conn).get("layers", {}))
    except duckdb.CatalogException:
        return None, []
    return (layers[0] if layers else None), layers


def write_meta(conn: duckdb.DuckDBPyConnection, values: dict[str, Any]) -> None:
    statements = Statements(conn)
    for key, value in values.items():
        statements.put_meta(key=key, value=json.dumps(value))


def schema_version(conn: duckdb.DuckDBPyConnection) -> int | None:
    """The catalog's store format; None for a catalog that no first ingest completed yet."""
    try:
        rows = {row["key"]: row["value"] for row in Statements(conn).format_keys().to_pylist()}
    except duckdb.CatalogException:  # no store_meta table yet
        return None
    key = next((key for key in ("schema_version", "format") if key in rows), None)  # format 2 kept `format`
    if key is None:
        return None
    value = rows[key]  # a key present with SQL NULL or JSON null names no format: refused below
    try:
        version = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        version = value
    if isinstance(version, bool) or not isinstance(version, int) or version < 2:
        raise StoreError(f"the store's metadata names format {value!r}, which no polysem writes (formats are whole "
                         f"numbers from 2 to {SCHEMA_VERSION}); restore the catalog from a backup, or ingest into a "
                         "new `store`")
    return version


def prepare_catalog(conn: duckdb.DuckDBPyConnection, store: object, *, redefine: bool = False) -> list[int]:
    """Bring a catalog opened read-write to this polysem: refuse a newer format, create missing
    tables, run the migrations an older format needs and (re)define every view and macro, in one
    transaction. Returns the formats migrated to ([] when nothing was older)."""
    version = schema_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(f"the store {store} is in format {version}, made by a newer polysem; this polysem "
                         f"{__version__} reads formats up to {SCHEMA_VERSION}: upgrade polysem to use it")
    pending = [(n, block) for n, block in load_migrations() if version is not None and version < n <= SCHEMA_VERSION]
    if not pending and not redefine and stored_digest(conn) == sql_digest():
        return []  # the catalog's objects are this polysem's: trust them
    conn.begin()
    try:
        apply_blocks(conn, persistent=True, kinds=("TABLE",))  # a table a store lacks, at the current shape
        for _, block in pending:
            conn.execute(block.sql)
        apply_blocks(conn, persistent=True, kinds=("VIEW", "MACRO"))
        Statements(conn).put_meta(key="sql_digest", value=json.dumps(sql_digest()))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return [n for n, _ in pending]


def polysem_objects() -> tuple[set[str], set[tuple[str, str]]]:
    """(the names of polysem's tables, the (kind, name) of its views and macros as `catalog_objects` lists them)."""
    blocks = load_blocks()
    objects = {("view", b.name) for b in blocks if b.kind == "VIEW"}
    objects |= {("table macro" if re.search(r"\bAS\s+TABLE\b", b.sql, re.IGNORECASE) else "macro", b.name)
                for b in blocks if b.kind == "MACRO"}
    return {b.name for b in blocks if b.kind == "TABLE"}, objects


def set_aside_foreign_objects(conn: duckdb.DuckDBPyConnection, database: str) -> None:
    """On `conn`, a connection whose own database holds nothing of a received catalog (the process's scratch), with a
    reader's private copy of that catalog attached read-write as `database`: drop every macro and type of the copy
    that polysem does not define, and refuse a view standing where polysem keeps a table. DuckDB takes a stored macro
    or type before its own function, operator or type of that name, so a received catalog's `getvariable` or `->>`
    macro or `json` type would change what polysem's SQL computes, and a view named `store_meta` would run its own
    SQL where polysem reads a table. The copy is listed from `conn`'s own database, where none of its macros is
    found, so none of them runs. Run on a reader's private copy only (the store is never written)."""
    foreign = foreign_objects(conn, database)
    refuse_posing_views(foreign)
    dropped = False
    for row in foreign:
        if row["kind"] in ("macro", "table macro", "type"):
            try:
                conn.execute(drop_statement(row, database))
                dropped = True
            except duckdb.Error:
                pass  # a type a column uses stays
    left = foreign_objects(conn, database) if dropped else foreign  # listed again: what stayed
    refuse_shadowing(left, "cannot set aside (a table depends on it)")
    kept = [row for row in left if row["kind"] in ("macro", "table macro")]
    if kept:  # a check or default runs it when a row is written, and preparing writes store_meta
        raise depended_on(kept[0])


def drop_statement(row: dict[str, Any], database: str) -> str:
    """The DROP of a macro, table macro or type (a `foreign_objects` row) of `database`, by its schema and name as
    quoted identifiers, never as SQL text: a received catalog chooses them."""
    statement = {"macro": "DROP MACRO", "table macro": "DROP MACRO TABLE", "type": "DROP TYPE"}[row["kind"]]
    return f"{statement} IF EXISTS {identifier(database)}.{identifier(row['schema_name'])}.{identifier(row['name'])}"


def depended_on(row: dict[str, Any]) -> StoreError:
    """The refusal of a macro (a `foreign_objects` row) a table depends on: writing the table would run it."""
    return StoreError(f"the store's catalog holds {row['kind']} {row['name']!r}, which polysem never writes and cannot "
                      "set aside (a table depends on it): writing the table would run it; drop it with DuckDB, or "
                      "ingest into a new `store`")


def refuse_foreign_objects(conn: duckdb.DuckDBPyConnection, own: str) -> None:
    """On a writer's connection to a store's catalog, database `own` (DuckDB names it after the file): refuse a macro
    or type of the catalog that shadows one of DuckDB's, a macro a table depends on, and a view standing where
    polysem keeps a table, each named: polysem's SQL would run it. They are listed with an in-memory database of
    the connection as the default one (named with its schema, so that no schema of the catalog stands for it), where
    none of the catalog's macros is found, and no SQL runs before: none of them runs. The store's own objects are
    never dropped."""
    conn.execute("ATTACH ':memory:' AS polysem_listing")
    try:
        conn.execute("USE polysem_listing.main")
        foreign = foreign_objects(conn, own)
        refuse_posing_views(foreign)
        refuse_shadowing(foreign, "does not set aside in a store it writes")
        for row in foreign:  # one a table depends on (a check, a default) runs when polysem writes that table
            if row["kind"] in ("macro", "table macro"):
                conn.begin()
                try:  # DuckDB refuses to drop it; rolled back either way, so the store is never changed
                    conn.execute(drop_statement(row, own))
                except duckdb.Error:
                    raise depended_on(row) from None
                finally:
                    conn.rollback()
    finally:
        conn.execute(f"USE {identifier(own)}.main")
        conn.execute("DETACH polysem_listing")


def refuse_posing_views(foreign: list[dict[str, Any]]) -> None:
    """Refuse a view (of `foreign_objects`) named like one of polysem's tables: reading the table would run it."""
    tables, _ = polysem_objects()
    posing = [row["name"] for row in foreign if row["schema_name"] == "main" and row["kind"] == "view"
              and row["name"] in tables]
    if posing:
        raise StoreError(f"the store's catalog holds a view {posing[0]!r} where polysem keeps a table of that name: "
                         "reading it would run the view's own SQL; restore the catalog from a backup, or ingest into a "
                         "new `store`")


def refuse_shadowing(foreign: list[dict[str, Any]], why: str) -> None:
    """Refuse a macro or type (of `foreign_objects`) in schema main named like one of DuckDB's, which DuckDB would
    take before its own in polysem's SQL."""
    shadowing = [row for row in foreign if row["schema_name"] == "main" and row["kind"] in ("macro", "table macro", "type")
                 and duckdb_knows(row["kind"], row["name"])]
    if shadowing:
        names = ", ".join(f"{row['kind']} {row['name']!r}" for row in shadowing[:3])
        raise StoreError(f"the store's catalog holds {names}, which polysem never writes and {why}: DuckDB would take "
                         "it before its own and change what polysem computes; drop it with DuckDB, or ingest into a new "
                         "`store`")


def duckdb_knows(kind: str, name: str) -> bool:
    """Does DuckDB itself (no catalog, no extension loaded on demand) have a function (`kind` a macro) or a type of
    this name, which a stored one would shadow?"""
    with duckdb.connect(config=SANDBOX) as clean:
        if kind == "type":
            try:
                clean.execute(f"SELECT NULL::{identifier(name)}")
            except duckdb.Error:
                return False
            return True
        return bool(clean.execute("SELECT count(*) FROM duckdb_functions() WHERE lower(function_name) = lower(?)",
                                  [name]).fetchall()[0][0])


def identifier(name: str) -> str:
    """`name` as a quoted SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def foreign_objects(conn: duckdb.DuckDBPyConnection, database: str, macros: bool = True) -> list[dict[str, Any]]:
    """The `catalog_objects` rows of `database` that are not polysem's own views and macros in schema main (macros
    not listed unless `macros`)."""
    _, ours = polysem_objects()
    return [row for row in Statements(conn).catalog_objects(database=database, macros=macros).to_pylist()
            if row["schema_name"] != "main" or (row["kind"], row["name"]) not in ours]


def fill_template(conn: duckdb.DuckDBPyConnection, fresh: str) -> bool:
    """On `conn`, a catalog `prepare_catalog` defined that holds nothing but polysem's objects and no row but the SQL
    digest (the template of `polysem.query.store.catalog_template`) as its own database, with a received catalog
    attached read-only as database `fresh`: give the template fresh's rows and return True, where that is what
    preparing fresh gives: both hold polysem's tables alone, created by the same statements (columns, types,
    defaults, constraints), fresh nothing else but views of polysem's names and macros (preparing replaces or drops
    those), and its rows are of a complete store of this polysem's format and SQL digest. Otherwise return False
    with the template unchanged (the caller prepares fresh, which also names what is wrong with it).

    Nothing of fresh runs: its objects are listed from the template's database (where none of fresh's macros is
    found), only its base tables are read, and the rows are checked once they are in the template."""
    own = conn.execute("SELECT current_database()").fetchall()[0][0]
    statements = Statements(conn)
    table_names, _ = polysem_objects()
    tables = statements.catalog_tables(database=own).to_pylist()
    if statements.catalog_tables(database=fresh).to_pylist() != tables:
        return False
    if any(row["schema_name"] != "main" or row["table_name"] not in table_names for row in tables):
        return False
    # Preparing drops every macro polysem does not define and replaces polysem's, so fresh's macros change nothing
    # here; one preparing could not drop would be one a table depends on, and polysem's tables depend on none.
    if foreign_objects(conn, fresh, macros=False):
        return False
    conn.begin()
    try:
        for table in (identifier(row["table_name"]) for row in tables):  # base tables alone (checked above)
            conn.execute(f"DELETE FROM {identifier(own)}.main.{table}")
            conn.execute(f"INSERT INTO {identifier(own)}.main.{table} SELECT * FROM {identifier(fresh)}.main.{table}")
        if not catalog_created(conn) or schema_version(conn) != SCHEMA_VERSION or stored_digest(conn) != sql_digest():
            conn.rollback()
            return False
        statements.put_meta(key="sql_digest", value=json.dumps(sql_digest()))  # as preparing writes it
        conn.commit()
    except (StoreError, duckdb.Error):
        conn.rollback()
        return False
    except BaseException:  # Ctrl-C: the connection (the process's scratch) must not stay in the transaction
        conn.rollback()
        raise
    return True
