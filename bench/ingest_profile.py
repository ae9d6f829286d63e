"""Where an ingest's time goes, per stage, measured with profilers on a real `polysem.ingest` call.

Synthetic ImageNet-shaped JPEGs (bench/_imagenet.py), ResNet-50 with random weights, layer4.2.conv3,
the library's defaults for workers and threads. Three ingests of the same images into fresh stores,
in one process after a warm-up ingest (imports and first-call costs are reported apart):

1. unprofiled: the wall time of the call;
2. torch.profiler (CPU, and CUDA where the device is a GPU): the named ranges that ingest/pipeline.py and
   ingest/attribution.py open (`ingest.load_batch`, `ingest.host_to_device`, `ingest.forward`,
   `ingest.backward`, `ingest.attribution_and_input_sums`, `ingest.device_to_host`, `ingest.write`,
   `ingest.compact`, `ingest.probe`, `ingest.prepare_store`);
3. cProfile: splits the loading of a batch into file read, JPEG decode, RGB conversion, resize,
   crop, to-tensor, normalise and collate (functions of PIL, torchvision.transforms and
   polysem.util.images; with `--workers` > 0 they run in worker processes and are not seen).

Prints a table (seconds and ms per image) and optionally writes JSON. Usage:
    python bench/ingest_profile.py [--images 64] [--batch-size 16] [--device auto] [--json FILE]
`--tiny` (4 images, ResNet-18) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _imagenet import write_split  # noqa: E402

RANGES = ["ingest.probe", "ingest.prepare_store", "ingest.load_batch", "ingest.host_to_device", "ingest.forward",
          "ingest.backward", "ingest.attribution_and_input_sums", "ingest.device_to_host", "ingest.write",
          "ingest.compact"]

# cProfile: (stage, file-name part, function name); builtins have file "~"
LOAD_STAGES = [
    ("file read (open, stat, read)", "~", "<method 'read' of '_io.BufferedReader' objects>"),
    ("JPEG decode", "~", "<method 'decode' of 'ImagingDecoder' objects>"),
    ("convert to RGB (includes the lazy load: read + decode)", "Image.py", "convert"),
    ("resize (Resize 256)", "transforms.py", "forward", "Resize"),
    ("crop (CenterCrop 224)", "transforms.py", "forward", "CenterCrop"),
    ("to tensor (ToTensor)", "transforms.py", "__call__", "ToTensor"),
    ("normalise (Normalize)", "transforms.py", "forward", "Normalize"),
    ("collate (torch.stack)", "images.py", "collate"),
    ("load a batch, all of it (DataLoader next; the rows above also count the probe's image)", "dataloader.py",
     "__next__"),
]


def find(stats: pstats.Stats, file_part: str, name: str, line_hint: str | None = None) -> float:
    """Cumulative seconds of the matching functions (summed: several functions may match)."""
    total = 0.0
    for (file, line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and file_part in file:
            if line_hint is not None and not _defines(file, line, line_hint):
                continue
            total += ct
    return total


def _defines(file: str, line: int, cls: str) -> bool:
    """Whether the function at file:line belongs to class `cls` (the nearest `class` line above it)."""
    try:
        lines = Path(file).read_text().splitlines()[:line]
    except OSError:
        return False
    for text in reversed(lines):
        if text.startswith("class "):
            return text.startswith(f"class {cls}(") or text.startswith(f"class {cls}:")
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers; default: the library's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4.2.conv3")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="4 images through ResNet-18: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.batch_size, args.model, args.layer = 4, 2, "resnet18", "layer4.1.conv2"

    start = time.perf_counter()
    import torch
    from polysem.ingest import ingest
    from polysem.ingest.models import resolve_device
    from torch.profiler import ProfilerActivity, profile
    import_s = time.perf_counter() - start
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="polysem-profile-"))
    try:
        write_split(work / "data", "train", args.images, 1)
        options = dict(model=args.model, weights="random", layer=args.layer, batch_size=args.batch_size,
                       num_workers=args.workers, progress=False, device=device.type)
        start = time.perf_counter()
        ingest(work / "warm", work / "data", limit=1, classes=[0], **options)  # first calls: thread pools, kernels
        warm_s = time.perf_counter() - start
        start = time.perf_counter()
        ingest(work / "plain", work / "data", **options)
        plain_s = time.perf_counter() - start

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            ingest(work / "torch-profiled", work / "data", **options)
        torch_profiled_s = time.perf_counter() - start
        ranges = {}
        for event in prof.key_averages():
            if event.key in RANGES:
                ranges[event.key] = {"cpu_s": event.cpu_time_total / 1e6,
                                     "device_s": getattr(event, "device_time_total", 0) / 1e6, "calls": event.count}

        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        ingest(work / "cprofiled", work / "data", **options)
        profiler.disable()
        cprofiled_s = time.perf_counter() - start
        stats = pstats.Stats(profiler)
        loading = {stage: find(stats, *spec) for stage, *spec in LOAD_STAGES}

        n = args.images
        result = {
            "machine": (torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
                       + f", {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
                         f"load average {os.getloadavg()[0]:.2f}",
            "model": f"{args.model} {args.layer} (random weights)", "images": n, "batch_size": args.batch_size,
            "workers": args.workers, "import_s": round(import_s, 2), "warm_up_ingest_s": round(warm_s, 2),
            "ingest_s": round(plain_s, 2), "ingest_img_s": round(n / plain_s, 2),
            "torch_profiled_s": round(torch_profiled_s, 2), "cprofiled_s": round(cprofiled_s, 2),
            "ranges": {k: {"s": round(v["cpu_s"], 3), "ms_per_image": round(1000 * v["cpu_s"] / n, 2),
                           "device_s": round(v["device_s"], 3), "calls": v["calls"]} for k, v in ranges.items()},
            "loading_cprofile_s": {k: round(v, 3) for k, v in loading.items()},
        }
        print(f"# ingest profile: {result['model']}, {n} images, batch {args.batch_size}; {result['machine']}")
        print(f"ingest {plain_s:.2f} s unprofiled ({n / plain_s:.2f} img/s), {torch_profiled_s:.2f} s under "
              f"torch.profiler, {cprofiled_s:.2f} s under cProfile; imports {import_s:.2f} s, warm-up ingest {warm_s:.2f} s")
        print("| range (torch.profiler) | s | ms/image | calls |")
        print("| --- | ---: | ---: | ---: |")
        for key in RANGES:
            if key in result["ranges"]:
                r = result["ranges"][key]
                print(f"| `{key}` | {r['s']:.3f} | {r['ms_per_image']:.2f} | {r['calls']} |")
        print("| loading stage (cProfile, cumulative) | s | ms/image |")
        print("| --- | ---: | ---: |")
        for stage, seconds in loading.items():
            print(f"| {stage} | {seconds:.3f} | {1000 * seconds / n:.2f} |")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
