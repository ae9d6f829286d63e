"""`polysem ingest` against captum's LayerGradientXActivation loop, as whole processes, side by side.

The same JPEGs (bench/_imagenet.py: ImageNet wnid folders, about 500 x 375), the same model
(ResNet-50, random weights, seed 0), layer (layer4.2.conv3), batch size and torch threads. Each side is
one fresh process, timed from start to exit, start-up included, as a user runs it:

- polysem: `python -m polysem.cli ingest DATA --weights random ...` (attributions, input sums,
  logits, Parquet, compaction);
- captum: the loop a user writes: ImageFolder + DataLoader with the same preprocessing,
  `LayerGradientXActivation(model, layer).attribute(x, target=t)` summed over positions (a Linear over
  tokens, such as `--model vit_b_16 --layer encoder.layers.encoder_layer_11.mlp.0`: over the tokens), the
  results saved with numpy at the end (no input sums, no store).

The runs alternate (polysem, captum, polysem, ...), `--repeats` of each; the ratio is
captum's median / polysem's median (above 1: polysem is faster). The load average before the runs
is printed; `--quiet-load` waits (up to `--wait` s) for it to drop below that before measuring.
captum is not a dependency of polysem: `pip install 'polysem[bench]'` (or `pip install captum`); without
it the captum side is skipped with a message. `--tiny` (2 images, ResNet-18, 1 repeat, each side in this process)
only checks that the script runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _imagenet import write_split  # noqa: E402
from _process import python  # noqa: E402

CAPTUM_LOOP = r'''
import sys, time
import numpy as np, torch, torchvision
from captum.attr import LayerGradientXActivation
from torchvision import transforms
from torchvision.datasets import ImageFolder
data, model_name, layer_name, batch, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
model = torchvision.models.get_model(model_name, weights=None).eval()
layer = model.get_submodule(layer_name)
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
folder = ImageFolder(data, tf)
loader = torch.utils.data.DataLoader(folder, batch_size=batch, num_workers=0)
method = LayerGradientXActivation(model, layer)
rows = []
for x, y in loader:  # the folders are ImageNet wnids in logit order: the folder index is the logit
    a = method.attribute(x, target=y)  # a conv: N x C x H x W; a Linear over tokens: N x T x D
    rows.append((a.sum(dim=(2, 3)) if isinstance(layer, torch.nn.Conv2d) else a.flatten(1, -2).sum(1)).detach().numpy())
np.save(out, np.concatenate(rows))
'''


def timed(args: list[str], env: dict, in_process: bool = False) -> float:
    """Seconds of `python ARGS` from start to exit (`in_process`: run here, for --tiny)."""
    start = time.perf_counter()
    python(args, in_process, env)
    return time.perf_counter() - start


def wait_for_quiet(limit: float, wait_s: float) -> float:
    """The 1-minute load average once below `limit`, or after `wait_s` seconds, whichever first."""
    deadline = time.time() + wait_s
    while os.getloadavg()[0] >= limit and time.time() < deadline:
        time.sleep(10)
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48, help="images (one per class, ImageNet wnids)")
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4.2.conv3")
    parser.add_argument("--quiet-load", type=float, default=None, help="wait until the load average is below this")
    parser.add_argument("--wait", type=float, default=600, help="longest wait for --quiet-load, seconds")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="2 images, ResNet-18, 1 repeat: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.per_class, args.batch_size, args.repeats = 2, 1, 2, 1
        args.model, args.layer = "resnet18", "layer4.1.conv2"
    have_captum = importlib.util.find_spec("captum") is not None
    if not have_captum:
        print("captum is not installed: only polysem's side is measured (pip install 'polysem[bench]' for both)")
    work = Path(tempfile.mkdtemp(prefix="polysem-captum-"))
    env = {**os.environ, "POLYSEM_OFFLINE": "1"}
    try:
        classes = -(-args.images // args.per_class)
        write_split(work / "data", "train", classes, args.per_class)
        n = classes * args.per_class
        (work / "loop.py").write_text(CAPTUM_LOOP)
        load_before = wait_for_quiet(args.quiet_load, args.wait) if args.quiet_load else os.getloadavg()[0]
        times: dict[str, list[float]] = {"polysem": [], "captum": []}
        for i in range(args.repeats):
            store = work / f"store{i}"
            times["polysem"].append(timed(
                ["-m", "polysem.cli", "ingest", str(work / "data"), "--split", "train",
                 "--store", str(store), "--model", args.model, "--weights", "random", "--layer", args.layer,
                 "--batch-size", str(args.batch_size), "--device", "cpu"], env, args.tiny))
            shutil.rmtree(store)
            if have_captum:
                times["captum"].append(timed(
                    [str(work / "loop.py"), str(work / "data" / "train"), args.model, args.layer,
                     str(args.batch_size), str(work / "captum.npy")], env, args.tiny))
        medians = {k: statistics.median(v) for k, v in times.items() if v}
        result = {
            "images": n, "batch_size": args.batch_size, "model": f"{args.model} {args.layer} (random weights)",
            "cores": os.cpu_count(), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "seconds": {k: [round(t, 2) for t in v] for k, v in times.items() if v},
            "median_s": {k: round(v, 2) for k, v in medians.items()},
            "ratio_captum_over_polysem": round(medians["captum"] / medians["polysem"], 3) if have_captum else None,
        }
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
