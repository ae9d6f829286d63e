"""Small models and transforms the tests import by `tests.models:NAME`, like a user's own."""

import time

import torch
from torch import nn
from torchvision import transforms


class TinyNet(nn.Module):
    """3 x 16 x 16 -> 3 logits. `probe` is a 3x3 conv, stride 2, padding 1, with bias."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.probe = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.probe(self.stem(x)))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def not_a_module():
    return "a string"


small = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])
resnet_small = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])


def slow(image):
    """The small transform, slowed down so a test can kill an ingest mid-way."""
    time.sleep(0.05)
    return small(image)
