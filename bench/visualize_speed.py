"""Feature visualisation speed: optimisation steps per second for ResNet-50 at 224 px, 4 units in one batch.

ResNet-50 with random weights (nothing downloads), layer4.2.conv3 split for one channel
into c'1, c'2 and r (a random half of its inputs each), so the batch holds the original
channel, c'1, c'2 and r, as `polysem visualize RUN_ID` runs it. Each step is one forward
pass up to the layer and one backward pass to the image. Usage:

    python bench/visualize_speed.py [--steps 8] [--device cpu|cuda] [--size 224] [--tiny]

`--tiny` (1 step at 32 px, after a 1-step warm-up) only checks that the script still runs; tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from polysem.ingest.models import IMAGENET_MEAN, IMAGENET_STD, resolve_device

from polysem.method.disentangling import DisentangledConv, SourceSplit, replace_module
from polysem.method.visualize import METHODS, optimise, run_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="1 step at 32 px: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.size = 1, 32
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    layer = model.layer4[2].conv3
    inputs = torch.randperm(layer.in_channels).tolist()
    split = SourceSplit((tuple(sorted(inputs[:200])), tuple(sorted(inputs[200:400]))), tuple(sorted(inputs[400:])))
    replace_module(model, "layer4.2.conv3", DisentangledConv(layer, [7], [split]))
    model.to(device)
    target = run_target(model, "layer4.2.conv3", 7)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    magnitude = (1.0 / (torch.fft.fftfreq(args.size)[:, None] ** 2 + torch.fft.rfftfreq(args.size)[None] ** 2)
                 .sqrt().clamp(min=1 / args.size)).expand(3, -1, -1) * 0.5  # a 1/f stand-in spectrum
    results = {"device": str(device), "torch_threads": torch.get_num_threads(), "size": args.size, "units": 4}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for method in METHODS:
        run = lambda steps: optimise(target, channels=3, method=method, steps=steps, size=args.size, seed=0,
                                     device=device, to_input=lambda x: (x - mean) / std, magnitude=magnitude,
                                     progress=False)
        run(min(2, args.steps))  # warm-up: allocations, cuDNN autotuning
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run(args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        results[method] = {"steps": args.steps, "seconds": round(seconds, 2), "steps_per_s": round(args.steps / seconds, 3),
                           "minutes_for_512_steps": round(512 / (args.steps / seconds) / 60, 2)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
