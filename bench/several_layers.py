"""Several layers in one pass against one ingest per layer, whole processes, and what a layer's screening reads.

The same JPEGs (bench/_imagenet.py), model (random weights, seed 0), batch size and threads. Side A is one
process, `polysem ingest --layer L1 --layer L2` into one store; side B is two processes, `--layer L1` and
`--layer L2`, each into a store of its own, timed together. The runs alternate (A, B, A, B, ...), `--repeats`
of each; the ratio is A's median over B's (below 1: the one pass is faster). Each layer's rows of the two-layer
store are compared with its own store's (equal, or within float rounding where attention runs between the layers:
the largest relative difference is printed). Then, on the two-layer store, the screening of
the first layer (`polysemantic_pairs`) runs with DuckDB's profiler on polysem's SQL made in memory (so that
only Parquet is read), whose `total_bytes_read` is set against the same screening's in the store of that layer alone (the layer's share:
the screening reads the weight more than once, so the files' sizes are no measure of it) and the bytes of that
layer's files and of every layer's are printed; and the bytes
per image of each layer's files are printed (the store compacted, as an ingest leaves it).

Defaults: ViT-B/16's last two MLP layers (`encoder.layers.encoder_layer_10.mlp.0`, `..._11.mlp.0`) on 24 images;
`--model resnet50 --layers layer4.1.conv3,layer4.2.conv3` for ResNet-50's. `--tiny` (2 images, ResNet-18, one
repeat, each side in this process) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _imagenet import write_split  # noqa: E402
from _process import python  # noqa: E402


def ingest(data: Path, store: Path, model: str, layers: list[str], batch_size: int, in_process: bool) -> float:
    """Seconds of one `polysem ingest` process of these layers."""
    args = ["-m", "polysem.cli", "ingest", str(data), "--split", "train", "--store", str(store), "--model", model,
            "--weights", "random", "--batch-size", str(batch_size), "--device", "cpu"]
    for layer in layers:
        args += ["--layer", layer]
    start = time.perf_counter()
    python(args, in_process, {**os.environ, "POLYSEM_OFFLINE": "1"})
    return time.perf_counter() - start


def rows(store: Path, layer: str) -> list[dict]:
    import polysem

    return polysem.Store(store, layer=layer).sql(
        "SELECT image_id, attribution, input_sum, positions, target_logit FROM layer_samples ORDER BY image_id"
    ).to_pylist()


def compare(together: list[list[dict]], alone: list[list[dict]]) -> tuple[list[bool], list[float]]:
    """Per layer: are its rows those of its own store, and the largest difference of an attribution or input sum
    relative to the largest magnitude (0 when equal)."""
    import numpy as np

    identical, largest = [], []
    for a, b in zip(together, alone, strict=True):
        identical.append(a == b)
        worst = 0.0
        for column in ("attribution", "input_sum"):
            x, y = np.array([r[column] for r in a]), np.array([r[column] for r in b])
            worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)))
        largest.append(worst)
    return identical, largest


def screening_bytes(store: Path, layer: str) -> int:
    """DuckDB's total_bytes_read (Parquet only) for one layer's screening: polysem's tables, views and macros
    made in memory, with the store's metadata, so that only the store's Parquet files are read."""
    import duckdb

    import polysem
    from polysem.query.sqlfiles import apply_blocks

    meta_rows = polysem.Store(store, layer=layer).sql("SELECT key, value FROM store_meta").to_pylist()
    work = Path(tempfile.mkdtemp(prefix="polysem-bytes-"))
    try:
        con = duckdb.connect(config={"file_search_path": str(store), "enable_external_file_cache": False})
        apply_blocks(con, persistent=True, kinds=("TABLE",))
        con.executemany("INSERT INTO store_meta VALUES (?, ?)", [[r["key"], r["value"]] for r in meta_rows])
        apply_blocks(con, persistent=True, kinds=("VIEW", "MACRO"))
        first = next(r["value"] for r in meta_rows if r["key"] == "layer").strip('"')
        con.execute("SET VARIABLE polysem_first_layer = ?", [first])
        con.execute("SET VARIABLE polysem_layer = ?", [layer])
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute("PRAGMA profiling_output = ?", [str(work / "profile.json")])
        con.execute("SELECT * FROM polysemantic_pairs()").fetchall()
        con.close()
        found = re.findall(r'"total_bytes_read"\s*:\s*([0-9]+)', (work / "profile.json").read_text())
        return int(found[0]) if found else -1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24, help="images (one per class, ImageNet wnids)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="vit_b_16")
    parser.add_argument("--layers", default="encoder.layers.encoder_layer_10.mlp.0,encoder.layers.encoder_layer_11.mlp.0")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="2 images, ResNet-18, one repeat: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.batch_size, args.repeats = 2, 2, 1
        args.model, args.layers = "resnet18", "layer4.0.conv2,layer4.1.conv2"
    layers = args.layers.split(",")
    work = Path(tempfile.mkdtemp(prefix="polysem-layers-"))
    try:
        write_split(work / "data", "train", args.images, 1)
        times: dict[str, list[float]] = {"one_pass": [], "one_per_layer": []}
        for i in range(args.repeats):
            both = work / f"both{i}"
            times["one_pass"].append(ingest(work / "data", both, args.model, layers, args.batch_size, args.tiny))
            alone = [work / f"alone{i}-{j}" for j in range(len(layers))]
            times["one_per_layer"].append(sum(ingest(work / "data", store, args.model, [layer], args.batch_size,
                                                     args.tiny) for store, layer in zip(alone, layers, strict=True)))
            identical, largest = compare([rows(both, layer) for layer in layers],
                                         [rows(store, layer) for store, layer in zip(alone, layers, strict=True)])
            if i < args.repeats - 1:
                for store in (both, *alone):
                    shutil.rmtree(store)
        medians = {k: statistics.median(v) for k, v in times.items()}
        samples = sorted((both / "samples").glob("*/layer=*/*.parquet"))
        per_layer = {layer: sum(p.stat().st_size for p in samples if p.parent.name == f"layer={layer}")
                     for layer in layers}
        weights = {layer: (both / ("layer_weights.parquet" if i == 0 else f"layer_weights-{layer}.parquet")).stat().st_size
                   for i, layer in enumerate(layers)}
        read = screening_bytes(both, layers[0])
        read_alone = screening_bytes(alone[0], layers[0])  # the same screening in a store of that layer alone
        result = {
            "model": f"{args.model} (random weights)", "layers": layers, "images": args.images,
            "batch_size": args.batch_size, "cores": os.cpu_count(), "load_after": round(os.getloadavg()[0], 2),
            "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "median_s": {k: round(v, 2) for k, v in medians.items()},
            "ratio_one_pass_over_one_per_layer": round(medians["one_pass"] / medians["one_per_layer"], 3),
            "rows_identical": identical,
            "largest_difference": largest,  # of attributions and input sums, relative to the largest value
            "bytes_per_image": {layer: round(size / args.images) for layer, size in per_layer.items()},
            "screening_bytes_read": read,
            "first_layer_bytes": per_layer[layers[0]] + weights[layers[0]],  # its samples and its weight
            "all_layers_bytes": sum(per_layer.values()) + sum(weights.values()),
            "screening_bytes_read_alone": read_alone,
            "read_over_read_alone": round(read / read_alone, 3) if read > 0 and read_alone > 0 else None,
        }
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
