"""What `--decode tensor` changes in the store, against the default decoder (`pil`), on the same images.

The same JPEGs (bench/_imagenet.py: ImageNet wnid folders, about 500 x 375, quality 90), ResNet-50 with
random weights (seed 0, `--weights random`), layer4.2.conv3, the default transform, one device: ingested
once with each decoder (in this process, one store each), then compared:

- the model's inputs: the tensor path's preprocessed images against the PIL pipeline's (grey levels: one
  level is 1 / 255 before normalisation);
- per image, the largest relative difference of the stored attributions, max |a_t - a_p| / max |a_p|
  (max and median over the images), the same for the input sums, and whether the prediction changed;
- the floor: the same `pil` ingest at another batch size (the difference the batch composition alone makes);
- per image, how many of the 10 channels of largest attribution the two decoders share;
- the screening: `polysem screen`'s candidates (`polysemantic_pairs` at tau 0.03, p 0.75, gamma 0.5) and
  the relevant (channel, class) pairs they come from, also at p 0.5; with random weights no channel reaches
  the paper's tau of 0.03 (the largest relative attribution of an image is about 0.009 here), so the same
  again at `--low-tau` (0.005), where there are pairs to compare: how many each decoder finds, how many both.

Usage:
    python bench/decode_effect.py [--classes 100] [--per-class 2] [--device auto] [--batch-size 16]
                                  [--json FILE]
`--tiny` (3 classes x 1 image, ResNet-18) only checks that the script runs; tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _imagenet import write_split  # noqa: E402


def relative_differences(a: dict, b: dict, column: str) -> list[float]:
    """Per image (by path) max |a - b| / max |b| of a list column; images whose b is all zeros are skipped."""
    out = []
    for path, row in b.items():
        reference = np.asarray(row[column], dtype=np.float64)
        scale = np.abs(reference).max()
        if scale > 0:
            out.append(float(np.abs(np.asarray(a[path][column], dtype=np.float64) - reference).max() / scale))
    return out


def summary(values: list[float]) -> dict:
    return {"max": max(values), "median": statistics.median(values), "images": len(values)} if values else {}


def rows(store) -> dict:
    return {r["path"]: r for r in store.sql("SELECT path, prediction, attribution, input_sum FROM samples").to_pylist()}


def pair_sets(store, tau: float, p: float) -> tuple[set, set]:
    """(relevant (channel, class) pairs, candidate (channel, class1, class2) triples at gamma 0.5)."""
    bound = {"tau": tau, "p": p}
    relevant = store.sql("SELECT channel, class_id FROM relevant_pairs(tau := $tau, p := $p)", bound)
    candidates = store.sql("SELECT channel, class1, class2 FROM polysemantic_pairs(tau := $tau, p := $p, "
                             "gamma := 0.5)", bound)
    return (set(zip(*relevant.to_pydict().values(), strict=True)),
            set(zip(*candidates.to_pydict().values(), strict=True)))


def overlap(a: set, b: set) -> str:
    return f"pil {len(a)}, tensor {len(b)}, both {len(a & b)}"


def screening(stores: dict, settings) -> dict:
    out = {}
    for tau, p in settings:
        pil, tensor = pair_sets(stores["pil"], tau, p), pair_sets(stores["tensor"], tau, p)
        out[f"tau {tau}, p {p}"] = {"relevant pairs": overlap(pil[0], tensor[0]),
                                    "candidates (gamma 0.5)": overlap(pil[1], tensor[1])}
    return out


def top_channels_shared(a: dict, b: dict, k: int = 10) -> dict:
    """Per image, the fraction of its k channels of largest attribution that both decoders rank in their top k."""
    shared = [len(set(np.argsort(a[path]["attribution"])[-k:]) & set(np.argsort(b[path]["attribution"])[-k:])) / k
              for path in b]
    return {"mean": round(statistics.mean(shared), 4), "min": min(shared)}


def input_differences(data: Path, device: torch.device) -> dict:
    """The preprocessed images of both paths, compared in grey levels (pil's on the CPU, tensor's on `device`)."""
    from PIL import Image

    from polysem.ingest.decode import decode_images, imagenet_batch
    from polysem.ingest.models import IMAGENET_STD, imagenet_transform
    from polysem.util.images import read_for_decoding

    paths = sorted(str(p) for p in (data / "train").rglob("*.JPEG"))
    grey = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255  # normalised units -> grey levels, per channel
    worst, total, differing, values, same_decode = 0.0, 0.0, 0, 0, 0
    for start in range(0, len(paths), 32):
        chunk = paths[start:start + 32]
        pil = torch.stack([imagenet_transform()(Image.open(p).convert("RGB")) for p in chunk])
        decoded = decode_images([read_for_decoding(p, None) for p in chunk], device)
        same_decode += sum(torch.equal(image.cpu().permute(1, 2, 0), torch.from_numpy(np.array(Image.open(p).convert(
            "RGB")))) for p, image in zip(chunk, decoded, strict=True) if isinstance(image, torch.Tensor))
        tensor = imagenet_batch(decoded).cpu()
        levels = (tensor - pil).abs() * grey
        worst = max(worst, levels.max().item())
        total += levels.sum().item()
        differing += int((levels > 0.5).sum())
        values += levels.numel()
    return {"decoded_like_pillow": f"{same_decode} of {len(paths)} images", "max_grey_levels": round(worst, 3), "mean_grey_levels": round(total / values, 5),
            "fraction_differing": round(differing / values, 5)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4.2.conv3")
    parser.add_argument("--low-tau", type=float, default=0.005, help="a tau random weights reach (see above)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="3 classes x 1 image, ResNet-18: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.classes, args.per_class, args.batch_size = 3, 1, 2
        args.model, args.layer = "resnet18", "layer4.0.downsample.0"  # 1x1: its ARVs are quick

    import polysem
    from polysem.ingest.models import resolve_device
    from polysem.query import Store

    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="polysem-decode-"))
    try:
        write_split(work / "data", "train", args.classes, args.per_class)
        options = {"model": args.model, "weights": "random", "layer": args.layer, "device": str(device),
                   "progress": False}
        seconds, stores = {}, {}
        runs = (("pil", "pil", args.batch_size), ("tensor", "tensor", args.batch_size),
                ("pil_other_batch", "pil", max(1, args.batch_size - 1)))
        for name, decode, batch_size in runs:
            start = time.perf_counter()
            polysem.ingest(work / name, work / "data", decode=decode, batch_size=batch_size, **options)
            seconds[name] = round(time.perf_counter() - start, 2)
            stores[name] = Store(work / name)
        pil, tensor, floor = rows(stores["pil"]), rows(stores["tensor"]), rows(stores["pil_other_batch"])
        assert sorted(pil) == sorted(tensor) == sorted(floor), "the decoders stored different images"
        result = {
            "date": time.strftime("%Y-%m-%d"), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cores": len(os.sched_getaffinity(0)), "load_average": round(os.getloadavg()[0], 2),
            "torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
            "model": f"{args.model} {args.layer} (random weights, seed 0)", "images": len(pil),
            "batch_size": args.batch_size, "seconds": seconds,
            "inputs": input_differences(work / "data", device),
            "attribution_relative_difference": summary(relative_differences(tensor, pil, "attribution")),
            "input_sum_relative_difference": summary(relative_differences(tensor, pil, "input_sum")),
            "predictions_changed": sum(tensor[p]["prediction"] != pil[p]["prediction"] for p in pil),
            "floor_other_batch_size": {
                "attribution_relative_difference": summary(relative_differences(floor, pil, "attribution")),
                "predictions_changed": sum(floor[p]["prediction"] != pil[p]["prediction"] for p in pil)},
            "top10_channels_shared": top_channels_shared(tensor, pil),
            "screening": screening(stores, [(0.03, 0.75), (0.03, 0.5), (args.low_tau, 0.75), (args.low_tau, 0.5)]),
        }
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
