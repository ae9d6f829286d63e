"""Ingest throughput against a bare loop of the same model on the same batches.

ResNet-50 (random weights, so nothing downloads; `--model`, `--layer` for others), layer4.2.conv3, 224x224 via the
default ImageNet preprocessing, JPEG images written by this script. Measured in
one run on one machine:

- ingest: `ingest.ingest` end to end (decode, transform, attribution, Parquet);
- bare-min: forward + backward from the target logits to the layer output, on
  batches already in memory: the least compute any attribution needs;
- bare-full: forward + a full backward (to the input), what a plain autograd
  loop computes.

Also reports the store's bytes per image. Usage:
    python bench/ingest_throughput.py [--images 64] [--batch-size 16] [--workers 1] [--tiny]

`--tiny` (2 images, ResNet-18) only checks that the script still runs; tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from polysem.ingest import ingest
from polysem.ingest.dataset import list_split
from polysem.ingest.models import imagenet_transform
from polysem.query import Store

from polysem.util.images import ImageRecords


def write_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=(40, 53, 3), dtype=np.uint8)  # upscaled: JPEG-like smoothness
        Image.fromarray(base).resize((333, 250), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    # the folders are no ImageNet wnids: map class i to logit i
    (root / "classes.json").write_text(json.dumps({f"class{c}": {"logit": c} for c in range(min(n, 4))}))


def bare_loop(model, layer, batches, full_backward: bool) -> float:
    start = time.perf_counter()
    for images, targets in batches:
        if full_backward:
            images = images.clone().requires_grad_(True)
            logits = model(images)
            logits.gather(1, targets.view(-1, 1)).sum().backward()
        else:
            seen = {}

            def hook(module, inputs, output):
                seen["out"] = output.detach().requires_grad_(True)
                return seen["out"]

            handle = layer.register_forward_hook(hook)
            logits = model(images)
            handle.remove()
            torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), seen["out"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="default: the library's (ingest.threads)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: the library's")
    parser.add_argument("--ingest-only", action="store_true", help="skip the bare loops")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet50", help="a torchvision model name (random weights)")
    parser.add_argument("--layer", default="layer4.2.conv3", help="its layer of interest")
    parser.add_argument("--tiny", action="store_true", help="2 images through ResNet-18: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.batch_size, args.model, args.layer = 2, 2, "resnet18", "layer4.1.conv2"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    work = Path(tempfile.mkdtemp(prefix="polysem-bench-"))
    try:
        write_images(work / "data", args.images)
        # warm-up (thread pools, allocator) outside the timings
        ingest(work / "warm", work / "data", model=args.model, weights="random", layer=args.layer,
               batch_size=args.batch_size, limit=2, progress=False, device=str(device.type))
        start = time.perf_counter()
        ingest(work / "store", work / "data", model=args.model, weights="random", layer=args.layer,
               batch_size=args.batch_size, num_workers=args.workers, threads=args.threads, progress=False,
               device=str(device.type))
        ingest_s = time.perf_counter() - start
        if args.ingest_only:
            n = Store(work / "store").sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
            print(json.dumps({"workers": args.workers, "threads": args.threads, "images": n,
                              "ingest_img_s": round(n / ingest_s, 2)}))
            return

        torch.manual_seed(0)
        model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        layer = model.get_submodule(args.layer)
        records = list_split(work / "data", "train").records
        dataset = ImageRecords(records, imagenet_transform())
        tensors = torch.stack([dataset[i][1] for i in range(len(records))])
        targets = torch.tensor([r.target for r in records])
        batches = [(tensors[i : i + args.batch_size].to(device), targets[i : i + args.batch_size].to(device))
                   for i in range(0, len(records), args.batch_size)]
        bare_min_s = bare_loop(model, layer, batches, full_backward=False)
        for p in model.parameters():
            p.requires_grad_(True)
        bare_full_s = bare_loop(model, layer, batches, full_backward=True)

        store = Store(work / "store")
        sample_bytes = sum(p.stat().st_size for p in (work / "store" / "samples" / "train").glob("*.parquet"))
        n = store.sql("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
        result = {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "model": args.model, "layer": args.layer, "images": n, "batch_size": args.batch_size, "workers": args.workers,
            "ingest_img_s": n / ingest_s, "bare_min_img_s": n / bare_min_s, "bare_full_img_s": n / bare_full_s,
            "ratio_vs_bare_min": bare_min_s / ingest_s, "ratio_vs_bare_full": bare_full_s / ingest_s,
            "bytes_per_image": sample_bytes / n,
        }
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
