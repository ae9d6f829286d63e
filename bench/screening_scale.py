"""Screening cost at ImageNet shape: 2048 channels, 512 inputs, 1000 classes.

For each size (default 10k, 30k, 100k images) a synthetic store is written
straight in the store's Parquet format, in ImageFolder order (sorted by class, as
an ingest writes it). Each image has a few channels far above tau (three per
class, as the method expects of real data) and small noise elsewhere. The split is
then compacted in a fresh process, as ingest does at its end (timed: wall and CPU
seconds, peak memory), and each query below runs on the compacted store in a
fresh process (so peak memory is per query):

- the bare scan: `SELECT sum(list_sum(attribution)) FROM samples` (every value read once);
- class_channel_relevance, arv_cosine and polysemantic_pairs (the whole screening);
- one `arv` row, against a brute-force ARV by autograd over the same class's
  images with ResNet-50 (the reference code's way; timed on a few images, scaled
  to the class size).

Usage: python bench/screening_scale.py [--sizes 10000,30000,100000] [--keep DIR] [--tiny]

`--tiny` (1,000 images, one per class; the compaction and the queries in this process; the brute-force ARV
timed on one 64 x 64 image) only checks that the script still runs; tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _process import python
from _synthetic import finish_store, start_store, write_part

CHANNELS, INPUTS, CLASSES = 2048, 512, 1000
QUERIES = {
    "bare_scan": "SELECT sum(list_sum(attribution)) FROM samples",
    "class_channel_relevance": "SELECT count(*) FROM class_channel_relevance()",
    "class_means_of": "SELECT count(*) FROM class_means_of()",
    "arv_cosine": "SELECT count(*) FROM arv_cosine()",
    "polysemantic_pairs": "SELECT count(*) FROM polysemantic_pairs()",
    "arv_one_row": "SELECT arv FROM arv WHERE channel = 1660 AND class_id = 530",
}


def build_store(path: Path, n_images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    start_store(path, CLASSES, rng.normal(0, 0.02, size=(CHANNELS, INPUTS)))
    own_channels = rng.integers(0, CHANNELS, size=(CLASSES, 3))  # each class drives three channels
    own_inputs = rng.integers(0, INPUTS, size=(CLASSES, 24))  # through a few l-1 channels
    chunk = 10_000
    for start in range(0, n_images, chunk):
        n = min(chunk, n_images - start)
        # ImageFolder order: the split sorted by class, as an ingest writes it (compaction reads few parts per class)
        targets = (np.arange(start, start + n) * CLASSES // n_images).astype(np.int32)
        attribution = rng.normal(0, 0.002, size=(n, CHANNELS)).astype(np.float32)
        attribution[np.arange(n)[:, None], own_channels[targets]] += rng.uniform(0.5, 1.5, size=(n, 3)).astype(np.float32)
        input_sum = rng.exponential(0.05, size=(n, INPUTS)).astype(np.float32)
        input_sum[np.arange(n)[:, None], own_inputs[targets]] += rng.exponential(5.0, size=(n, 24)).astype(np.float32)
        write_part(path, np.arange(start, start + n), targets, attribution, input_sum, rng.normal(5, 1, n))
    finish_store(path, CHANNELS, INPUTS)


def time_compaction(store: Path, in_process: bool = False) -> dict:
    """Compact the split in a fresh process, as ingest does at its end: wall and CPU seconds, peak RSS."""
    code = (
        "import resource, sys, time; from pathlib import Path; from polysem.query.compact import compact_split, lock_split\n"
        "t = time.perf_counter(); lock = lock_split(Path(sys.argv[1]), 'train'); s = compact_split(Path(sys.argv[1]), 'train')\n"
        "dt = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_SELF)\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(dt, u.ru_utime + u.ru_stime, hwm, s.files_before, s.files_after)"
    )
    seconds, cpu, peak_kb, before, after = python(["-c", code, str(store)], in_process).split()[-5:]
    return {"seconds": round(float(seconds), 2), "cpu_seconds": round(float(cpu), 2), "peak_rss_mb": int(peak_kb) // 1024,
            "files_before": int(before), "files_after": int(after)}


def time_query(store: Path, sql: str, in_process: bool = False) -> dict:
    """Run one query in a fresh process; wall seconds and that process's peak RSS."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    code = (
        "import sys, time; from polysem.query import Store\n"
        "s = Store(sys.argv[1]); s.sql('SELECT 1')\n"
        "t = time.perf_counter(); rows = s.sql(sys.argv[2]).num_rows; dt = time.perf_counter() - t\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(dt, rows, hwm)"
    )
    seconds, rows, peak_kb = python(["-c", code, str(store), sql], in_process).split()[-3:]
    return {"seconds": float(seconds), "peak_rss_mb": int(peak_kb) / 1024}


def brute_force_arv_seconds_per_image(n: int = 4, size: int = 224) -> float:
    """Forward of ResNet-50 to layer4.2.conv3's input and autograd through it, per image (reference code's way), on
    `size` x `size` images."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    conv = model.layer4[2].conv3
    images = torch.randn(n, 3, size, size)
    seen = {}
    handle = conv.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    start = time.perf_counter()
    for k in range(n):
        with torch.no_grad():
            model(images[k : k + 1])
        x = seen["x"].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(conv(x)[0, 1660].sum(), x)
        (x * grad).sum(dim=(2, 3))
    handle.remove()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--keep", type=Path, help="keep the stores here instead of a temp folder")
    parser.add_argument("--tiny", action="store_true", help="1000 images, in this process: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.sizes = "1000"
    root = args.keep or Path(tempfile.mkdtemp(prefix="polysem-screen-"))
    results = {}
    try:
        for size in map(int, args.sizes.split(",")):
            path = root / f"store-{size}"
            if not path.exists():
                start = time.perf_counter()
                build_store(path, size)
                print(f"built {size} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            compacted = any((path / "samples" / "train").glob("compact-*"))
            row = {} if compacted else {"compaction": time_compaction(path, args.tiny)}  # as ingest leaves a store
            row |= {name: time_query(path, sql, args.tiny) for name, sql in QUERIES.items()}
            row["samples_bytes"] = sum(p.stat().st_size for p in (path / "samples" / "train").glob("*.parquet"))
            row["class_size"] = size / CLASSES
            results[size] = row
            print(json.dumps({size: row}), file=sys.stderr)
        per_image = brute_force_arv_seconds_per_image(1, 64) if args.tiny else brute_force_arv_seconds_per_image(4)
        results["brute_force_arv_s_per_image"] = per_image
        print(json.dumps(results, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
