"""The second built-in example: a small vision transformer on Fashion-MNIST, its MLP units split.

    python -m examples.fashion_vit DIR   # data, a ViT trained in about a minute on 2 cores, the whole study

The model is torchvision's `VisionTransformer` at Fashion-MNIST's size (28 x 28, 7 x 7 patches: 16 patch
tokens and the class token; 2 blocks of width 32, MLPs of 24 units). The layer of interest is the last block's
first MLP Linear, `encoder.layers.encoder_layer_1.mlp.0`, a layer of 24 units applied to every token (polysem
sums each unit's attribution over the tokens). With 24 units for 10 classes, units must serve several.

The study runs through the Python API: ingest of both blocks' `mlp.0` into one store (train and val, one
forward and one backward pass per batch for the two layers), WordNet similarities, the last block's screening,
the first polysemantic unit it finds split into its concepts, verified, visualised, evaluated, and the report
(DIR/report/index.html); `polysem screen --store DIR/store --layer encoder.layers.encoder_layer_0.mlp.0` screens
the first block's. The images are the built-in example's (`examples.fashion_mnist`).

It keeps the paper's tau (0.03). With 24 units the mean share of an image's attribution is 1/24, and no tau
can stand to it as the paper's 0.03 stands to 1/2048 (`polysem.errors.ThresholdWarning` says so for any
layer this narrow); the example knows that and does not repeat the warning.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms
from torchvision.models.vision_transformer import VisionTransformer

from examples import fashion_mnist

LAYER = "encoder.layers.encoder_layer_1.mlp.0"
FIRST_BLOCK = "encoder.layers.encoder_layer_0.mlp.0"  # stored beside it, from the same passes
WIDTH, MLP_UNITS = 32, 24


def model() -> nn.Module:
    """28 x 28 images (three equal channels) -> 10 logits."""
    torch.manual_seed(0)
    return VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=4, hidden_dim=WIDTH,
                             mlp_dim=MLP_UNITS, num_classes=10, dropout=0.0, attention_dropout=0.0)


MEAN, STD = fashion_mnist.MEAN, fashion_mnist.STD
transform = transforms.Compose([transforms.Grayscale(3), transforms.ToTensor(),
                                transforms.Normalize((MEAN,) * 3, (STD,) * 3)])


def train(dataset, indices: list[int], epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = model().train()
    images = fashion_mnist.normalised(dataset.data[indices], channels=3)
    labels = dataset.targets[indices]
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(order), 128):
            batch = order[start : start + 128]
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(images[batch]), labels[batch]).backward()
            optimiser.step()
    return net.eval()


def prepare(out: Path, train_per_class: int = 2000, val_per_class: int = 100, epochs: int = 6) -> Path:
    """out/data/{train,val} (the built-in example's images) and out/fashion_vit.pt (cached); the weights path."""
    train_set, test_set, indices = fashion_mnist.prepare_images(out, train_per_class, val_per_class)
    weights, report = out / "fashion_vit.pt", out / "fashion_vit.json"
    if weights.exists() and report.exists():
        print(f"model: cached {weights} (test accuracy {json.loads(report.read_text())['test_accuracy']:.3f})")
        return weights
    start = time.time()
    net = train(train_set, indices, epochs)
    acc = fashion_mnist.accuracy(net, test_set, channels=3)
    torch.save(net.state_dict(), weights)
    report.write_text(json.dumps({"test_accuracy": acc, "train_images": len(indices), "seconds": time.time() - start}))
    print(f"model: trained on {len(indices)} images in {time.time() - start:.0f} s, test accuracy {acc:.3f} "
          f"-> {weights}")
    return weights


def study(out: Path, weights: Path, *, verify_limit: int | None = 200, batch_size: int = 256,
          visualize_steps: int = 256) -> dict:
    """The whole study on out/data into out/store; returns what it found (the run, its verdict, the report)."""
    import polysem

    store = polysem.Store(out / "store", layer=LAYER)  # the layer the study works on; the store holds both
    for split in ("train", "val"):
        summary = polysem.ingest(store, out / "data", split, model="examples.fashion_vit:model", weights=str(weights),
                                 layer=[FIRST_BLOCK, LAYER], transform="examples.fashion_vit:transform",
                                 batch_size=batch_size, progress=False)
        print(f"ingest {split}: {summary.n_written} images")
    polysem.wordnet(store)
    from polysem.errors import ThresholdWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)  # a 24-unit layer, as the module says
        screened = polysem.screen(store, limit=5)
    print(f"screening: {screened.num_rows} polysemantic pairs shown")
    if screened.num_rows == 0:
        return {"run": None}
    row = screened.to_pylist()[0]
    run = polysem.disentangle(store, row["channel"], concept1=[row["class1"]], concept2=[row["class2"]],
                              progress=False)
    verification = polysem.verify(store, run.run_id, limit=verify_limit, progress=False)
    # at the model's input size (28 px): the units' objective is summed over the 17 tokens
    polysem.visualize(store, run.run_id, size=28, steps=visualize_steps, progress=False)
    polysem.evaluate(store, run.run_id)
    report = polysem.report(store, out / "report")
    print(f"unit {run.channel} of {LAYER} split into {row['name1']} and {row['name2']}: "
          f"{'resolved' if verification.resolved else 'not resolved'}; report {report}")
    return {"run": run, "verification": verification, "report": report}


def layernorm_bias(out: Path) -> dict:
    """What the LayerNorm's bias in front of the layer does to the ARVs of the study's store (docs/method.md):
    its share of each class's mean input sums, and the ARV cosines over every unit and class pair with and without
    it (`|T| beta` subtracted from the mean input sums)."""
    import numpy as np

    import polysem

    store = polysem.Store(out / "store", layer=LAYER)
    table = store.sql("SELECT target, input_sum, positions FROM layer_samples WHERE split = 'train'").to_pydict()
    sums, targets, tokens = np.array(table["input_sum"]), np.array(table["target"]), table["positions"][0]
    classes = sorted(set(targets.tolist()))
    means = np.array([sums[targets == k].mean(0) for k in classes])
    weight = np.array(store.sql("SELECT weight FROM layer_weights ORDER BY channel").column(0).to_pylist())
    net = model()
    net.load_state_dict(torch.load(out / "fashion_vit.pt"))
    beta = net.get_submodule(LAYER.rsplit(".mlp", 1)[0]).ln_2.bias.detach().numpy()
    found = {"bias_share": np.linalg.norm(tokens * beta) / np.linalg.norm(means, axis=1)}
    for name, held in (("with_bias", means), ("without_bias", means - tokens * beta)):
        arvs = weight[:, None, :] * held[None]  # units x classes x inputs
        unit = arvs / np.linalg.norm(arvs, axis=2, keepdims=True)
        cosines = np.concatenate([(unit[:, i] * unit[:, j]).sum(1) for i in range(len(classes))
                                  for j in range(i + 1, len(classes))])
        found[name] = {"median_cosine": float(np.median(cosines)), "below_gamma": float((cosines < 0.5).mean())}
    print(f"|T| beta / |mean S| per class: {np.round(found['bias_share'], 2).tolist()}")
    for name in ("with_bias", "without_bias"):
        print(f"{name}: median ARV cosine {found[name]['median_cosine']:.3f}, "
              f"share below gamma 0.5 {found[name]['below_gamma']:.3f}")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="working folder (data, weights, store, report)")
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--layernorm-bias", action="store_true",
                        help="measure what the LayerNorm's bias does to the ARVs of the study's store")
    args = parser.parse_args()
    if args.layernorm_bias:
        layernorm_bias(args.out)
    else:
        study(args.out, prepare(args.out, args.train_per_class, args.val_per_class, args.epochs))
