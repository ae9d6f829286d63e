"""The built-in example: Fashion-MNIST photos and a small CNN with a narrow layer.

Bring your own model the same way: a module with a callable that builds the
`nn.Module` (`--model examples.fashion_mnist:model`), a transform from PIL image
to tensor (`--transform examples.fashion_mnist:transform`) and a state_dict file
(`--weights PATH`).

    python -m examples.fashion_mnist DIR   # writes DIR/data/{train,val}, trains DIR/fashion_cnn.pt

The layer of interest, `narrow`, has 8 channels for 10 classes, so channels
must serve several classes. Training adds an L1 penalty on narrow's input, so
that input is sparse and class-specific like the late layers of an ImageNet
CNN; a channel serving two classes then does so through different inputs,
which is what the screening looks for.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MEAN, STD = 0.2860, 0.3530

# Folder name -> readable name and WordNet 3.0 noun id (checked by tests/test_example.py).
CLASSES = {
    "tshirt_top": ("T-shirt/top", "n03595614"),  # jersey, T-shirt, tee shirt
    "trouser": ("Trouser", "n04489008"),
    "pullover": ("Pullover", "n04021028"),
    "dress": ("Dress", "n03236735"),
    "coat": ("Coat", "n03057021"),
    "sandal": ("Sandal", "n04133789"),
    "shirt": ("Shirt", "n04197391"),
    "sneaker": ("Sneaker", "n03472535"),  # gym shoe, sneaker
    "bag": ("Bag", "n02773037"),
    "ankle_boot": ("Ankle boot", "n02872752"),  # boot
}
FOLDERS = list(CLASSES)  # in Fashion-MNIST label order


class FashionCNN(nn.Module):
    """28x28 grayscale -> 10 logits. `narrow` is the 1x1 conv of interest (64 -> 8)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.narrow = nn.Conv2d(64, 8, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.narrow(self.features(x)))


def model() -> nn.Module:
    return FashionCNN()


transform = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])


def raw_dataset(root: Path, train: bool):
    """torchvision's FashionMNIST from Debian's files (no download), or downloaded when online."""
    from torchvision.datasets import FashionMNIST

    raw = root / "FashionMNIST" / "raw"
    if not all((raw / name).exists() for name in FILES) and all((DEBIAN_DIR / f"{n}.gz").exists() for n in FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            with gzip.open(DEBIAN_DIR / f"{name}.gz") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    try:
        return FashionMNIST(str(root), train=train, download=False)
    except RuntimeError:
        try:
            return FashionMNIST(str(root), train=train, download=True)
        except Exception as error:
            sys.exit(
                f"Error: Fashion-MNIST not found ({type(error).__name__}); install Debian's dataset-fashion-mnist "
                f"(apt-get install dataset-fashion-mnist) or run once online so torchvision can download it"
            )


def balanced_indices(labels: torch.Tensor, per_class: int) -> list[int]:
    """The first `per_class` images of every class, in dataset order."""
    chosen = []
    for label in range(len(FOLDERS)):
        chosen += (labels == label).nonzero().flatten()[:per_class].tolist()
    return sorted(chosen)


def write_image_folder(dataset, indices: list[int], out: Path) -> None:
    from PIL import Image

    for folder in FOLDERS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for index in indices:
        path = out / FOLDERS[int(dataset.targets[index])] / f"{index:05d}.png"
        if not path.exists():
            Image.fromarray(dataset.data[index].numpy(), mode="L").save(path)


def normalised(pixels: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """N x 28 x 28 uint8 pixels as the transform makes them: N x channels x 28 x 28, normalised."""
    return ((pixels.float() / 255 - MEAN) / STD).unsqueeze(1).expand(-1, channels, -1, -1)


def train(dataset, indices: list[int], epochs: int = 10, seed: int = 0, sparsity: float = 0.3) -> nn.Module:
    torch.manual_seed(seed)
    net = FashionCNN()
    images = normalised(dataset.data[indices])
    labels = dataset.targets[indices]
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(order), 128):
            batch = order[start : start + 128]
            optimiser.zero_grad()
            features = net.features(images[batch])
            logits = net.head(net.narrow(features))
            (nn.functional.cross_entropy(logits, labels[batch]) + sparsity * features.mean()).backward()
            optimiser.step()
    return net.eval()


def accuracy(net: nn.Module, dataset, channels: int = 1) -> float:
    """The share of the dataset's images the model classifies right (`channels`: the model's input channels)."""
    images = normalised(dataset.data, channels)
    with torch.no_grad():
        predictions = torch.cat([net(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    return (predictions == dataset.targets).float().mean().item()


def prepare_images(out: Path, train_per_class: int, val_per_class: int):
    """out/data/{train,val} with classes.json: the first images of each class; returns the two torchvision
    datasets and the train images' indices."""
    train_set, test_set = raw_dataset(out / "raw", True), raw_dataset(out / "raw", False)
    data = out / "data"
    write_image_folder(train_set, train_idx := balanced_indices(train_set.targets, train_per_class), data / "train")
    write_image_folder(test_set, balanced_indices(test_set.targets, val_per_class), data / "val")
    (data / "classes.json").write_text(json.dumps({f: {"name": n, "wnid": w} for f, (n, w) in CLASSES.items()}, indent=1))
    return train_set, test_set, train_idx


def prepare(out: Path, train_per_class: int = 2000, val_per_class: int = 100) -> Path:
    """Write out/data/{train,val} and out/fashion_cnn.pt (cached); return the weights path."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_set, test_set, train_idx = prepare_images(out, train_per_class, val_per_class)
    weights, report = out / "fashion_cnn.pt", out / "fashion_cnn.json"
    if weights.exists() and report.exists():
        print(f"model: cached {weights} (test accuracy {json.loads(report.read_text())['test_accuracy']:.3f})")
        return weights
    start = time.time()
    net = train(train_set, train_idx)
    acc = accuracy(net, test_set)
    torch.save(net.state_dict(), weights)
    report.write_text(json.dumps({"test_accuracy": acc, "train_images": len(train_idx), "seconds": time.time() - start}))
    print(f"model: trained on {len(train_idx)} images in {time.time() - start:.0f} s, "
          f"test accuracy {acc:.3f} on 10,000 Fashion-MNIST test images -> {weights}")
    return weights


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="working folder (data, weights)")
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--val-per-class", type=int, default=100)
    args = parser.parse_args()
    prepare(args.out, args.train_per_class, args.val_per_class)
