"""Small models and transforms the tests import by `tests.models:NAME`, like a user's own."""

import time
from typing import ClassVar

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


def zero_head_net() -> nn.Module:
    """TinyNet whose classification head starts at zero, as torchvision's ViT does: its logits are the bias
    alone, so every attribution (gradient x activation) is exactly zero."""
    model = tiny_net()
    nn.init.zeros_(model.head[3].weight)
    return model


def not_a_module():
    return "a string"


small = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])
resnet_small = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])


def slow(image):
    """The small transform, slowed down so a test can kill an ingest mid-way; with POLYSEM_TEST_MARKS set,
    it leaves one file per image there, so the test knows how far the ingest got without guessing a time."""
    import os
    import uuid

    time.sleep(0.05)
    marks = os.environ.get("POLYSEM_TEST_MARKS")
    if marks:
        open(os.path.join(marks, uuid.uuid4().hex), "w").close()
    return small(image)


class SlowTinyNet(TinyNet):
    """TinyNet (the same weights) that sleeps 0.1 s in every forward pass, so that a test can kill an ingest
    mid-way when the transform is the default one (`--decode tensor` takes no other)."""

    def forward(self, x):
        time.sleep(0.1)
        return super().forward(x)


def slow_tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return SlowTinyNet()


class _DetectorNet(nn.Module):
    """stem (1x1, 3 -> 3, ReLU): R, G and B detectors (l-1 channels 0, 1, 2); `probe` (1x1, 3 -> 3, no bias)
    the layer of interest; head: ReLU, mean over space, a linear map without bias to one logit per class."""

    def __init__(self, probe, head):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU())
        self.probe = nn.Conv2d(3, 3, 1, bias=False)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3, bias=False))
        with torch.no_grad():
            self.stem[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.probe.weight.copy_(torch.tensor(probe).view(3, 3, 1, 1))
            self.head[3].weight.copy_(torch.tensor(head))

    def forward(self, x):
        return self.head(self.probe(self.stem(x)))


class ColourNet(_DetectorNet):
    """A hand-built known-answer model for 3 classes of solid-colour images (blue, green, red).

    stem (1x1, 3 -> 3, ReLU): detectors of the R, G and B inputs (l-1 channels 0, 1, 2).
    probe (1x1, 3 -> 3), the layer of interest:
      channel 0 = R + G   polysemantic: serves red and green through different inputs
      channel 1 = B       monosemantic (blue)
      channel 2 = R       monosemantic (red)
    head: ReLU, mean over space, logits blue = ch1, green = 2 ch0 - 3 ch2, red = ch0 + ch2.
    """

    def __init__(self):
        super().__init__([[1.0, 1, 0], [0, 0, 1], [1, 0, 0]], [[0.0, 1, 0], [2, 0, -3], [1, 0, 1]])


def colour_net() -> nn.Module:
    return ColourNet()


to_tensor = transforms.ToTensor()


class UnusedLayerNet(TinyNet):
    """TinyNet with a conv (`spare`) that its forward pass never calls."""

    def __init__(self):
        super().__init__()
        self.spare = nn.Conv2d(6, 5, 1)


def unused_layer_net() -> nn.Module:
    torch.manual_seed(0)
    return UnusedLayerNet()


class TupleNet(TinyNet):
    """Returns (logits, features): not a batch x classes tensor."""

    def forward(self, x):
        features = self.probe(self.stem(x))
        return self.head(features), features


def tuple_net() -> nn.Module:
    torch.manual_seed(0)
    return TupleNet()


def raising_net():
    raise ValueError("no such checkpoint")


def exiting_net():
    import sys

    sys.exit(3)


gray = transforms.Compose([transforms.Resize((16, 16)), transforms.Grayscale(), transforms.ToTensor()])


def blind_colour_net() -> nn.Module:
    """ColourNet whose red logit ignores the features (a constant 0): red images have no attribution."""
    net = ColourNet()
    with torch.no_grad():
        net.head[3].weight[2] = 0
    return net


def clean_colour_net() -> nn.Module:
    """ColourNet whose R, G, B detectors ignore the images' noise (bias -0.1 before the ReLU): each detector is
    exactly 0 on the other colours' images, as ReLU networks often are."""
    net = ColourNet()
    net.stem[0].bias = nn.Parameter(torch.full((3,), -0.1), requires_grad=False)
    return net


def bias_colour_net() -> nn.Module:
    """clean_colour_net whose channel 0 (R + G) has bias 1, and whose blue logit also reads channel 0: on blue
    images channel 0 gets nothing from its inputs and carries only its bias, which the blue logit uses."""
    net = clean_colour_net()
    net.probe.bias = nn.Parameter(torch.tensor([1.0, 0, 0]), requires_grad=False)
    with torch.no_grad():
        net.head[3].weight[0] = torch.tensor([1.0, 1, 0])
    return net


class OpponentColourNet(ColourNet):
    """ColourNet with colour-opponent detectors in the stem: relu(R - (G + B) / 2 + 1/2) and likewise for G, B.

    On the solid-colour images it classifies like ColourNet (same classes, same planted channel
    0 = R + G), but a detector now also says no to the other colours, so activation maximisation
    has an answer to check: c'1's image is green and leaves c'2 (the red detector) at 0, c'2's is
    red, and the original channel's is yellow, which drives both (2 against 1.5 for pure red or
    green). The bias keeps every detector active on the grey images an optimisation starts from.
    """

    def __init__(self):
        super().__init__()
        self.stem[0] = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.stem[0].weight.copy_((1.5 * torch.eye(3) - 0.5).view(3, 3, 1, 1))
            self.stem[0].bias.fill_(0.5)


def opponent_colour_net() -> nn.Module:
    return OpponentColourNet()


def tri_colour_net() -> nn.Module:
    """Known answer for three unrelated concepts, classes blue, green, red (folder order).

    probe channel 0 = R + G + B serves all three colours, each through its own detector;
    channel 1 = B (blue only), channel 2 = R (red only).
    logits: blue = ch0 + ch1, green = ch0, red = ch0 + ch2.
    """
    return _DetectorNet([[1.0, 1, 1], [0, 0, 1], [1, 0, 0]], [[1.0, 1, 0], [1, 0, 0], [1, 0, 1]])


def pair_colour_net() -> nn.Module:
    """Known answer for two similar classes plus an unrelated one, classes blue, darkred, red (folder order).

    probe channel 0 = R + B serves blue (B detector) and both reds (the same R detector);
    channel 1 = B (blue only), channel 2 = R (red only: darkred's logit does not read it).
    logits: blue = ch0 + ch1, darkred = ch0, red = ch0 + ch2.
    """
    return _DetectorNet([[1.0, 0, 1], [0, 0, 1], [1, 0, 0]], [[1.0, 1, 0], [1, 0, 0], [1, 0, 1]])


def rgb_sum_net() -> nn.Module:
    """Classes blue, green, red. probe channel 0 = R + G + B serves all three; channel 1 = B, channel 2 = R.
    Split into green / red, the unit that takes the B input stays relevant for blue, whose ARV under it is
    orthogonal to its concept's: that unit is not monosemantic."""
    return _DetectorNet([[1.0, 1, 1], [0, 0, 1], [1, 0, 0]], [[1.0, 0, 0], [2, 0, -3], [1, 0, 1]])


def yellow_net() -> nn.Module:
    """Classes green, red, yellow. probe channel 0 = R + G, channel 1 = B, channel 2 = R; the yellow logit
    reads channel 0 alone. Split into {green, yellow} / {red}, c'2 (the R input) stays relevant for yellow,
    a class of the other concept: the split does not resolve the channel."""
    return _DetectorNet([[1.0, 1, 0], [0, 0, 1], [1, 0, 0]], [[2.0, 0, -3], [1, 0, 1], [1, 0, 0]])


class MixedSignNet(nn.Module):
    """A known answer for the two evaluation selections: classes blue, green, red (folder order) of 2 x 2 images.

    stem (1x1, 3 -> 3, ReLU): the R, G and B detectors (l-1 channels 0, 1, 2); `probe` (1x1, no bias) the layer of
    interest: channel 0 = R + G (polysemantic: red through R, green through G), 1 = B, 2 = R. The head reads every
    position with its own weight (flatten, then a linear map without bias), so a channel's attribution can be
    positive at one position and negative at another:
      blue  = sum B
      green = ch0 at positions (0, 0), (0, 1), (1, 0) minus ch0 at (1, 1), + sum B
      red   = minus ch0 at (0, 0), + ch0 at the other three, + sum B
    Ineq. 2 nets channel 0's positions out before it clamps; the authors' get_results.py clamps each position
    first, so an image with much of its R + G at the negative position is relevant only under the latter.
    """

    SIGNS: ClassVar[dict[str, tuple[float, ...]]] = {"green": (1.0, 1, 1, -1), "red": (-1.0, 1, 1, 1)}

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU())
        self.probe = nn.Conv2d(3, 3, 1, bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12, 3, bias=False))
        with torch.no_grad():
            self.stem[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.probe.weight.copy_(torch.tensor([[1.0, 1, 0], [0, 0, 1], [1, 0, 0]]).view(3, 3, 1, 1))
            head = torch.zeros(3, 3, 4)  # logit x channel x position (flattened C x H x W)
            head[:, 1] = 1  # every logit reads B everywhere
            head[1, 0] = torch.tensor(self.SIGNS["green"])
            head[2, 0] = torch.tensor(self.SIGNS["red"])
            self.head[1].weight.copy_(head.flatten(1))

    def forward(self, x):
        return self.head(self.probe(self.stem(x)))


class DarkOpponentNet(nn.Module):
    """OpponentColourNet whose colour-opponent detectors are off on grey: relu(1.5 x - (R + G + B) / 2 - 1/4),
    so an optimisation that starts from a grey image starts dead (every detector 0, a zero gradient), and
    a fourth probe channel, -(R + G + B) of the detectors, that never activates on any image.

    probe channel 0 = R + G (polysemantic: green and red), 1 = B, 2 = R, 3 = -(R + G + B) (never above 0);
    logits blue = ch1, green = 2 ch0 - 3 ch2, red = ch0 + ch2, as in ColourNet.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.probe = nn.Conv2d(3, 4, 1, bias=False)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False))
        with torch.no_grad():
            self.stem[0].weight.copy_((1.5 * torch.eye(3) - 0.5).view(3, 3, 1, 1))
            self.stem[0].bias.fill_(-0.25)
            self.probe.weight.copy_(torch.tensor([[1.0, 1, 0], [0, 0, 1], [1, 0, 0], [-1, -1, -1]]).view(4, 3, 1, 1))
            self.head[3].weight.copy_(torch.tensor([[0.0, 1, 0, 0], [2, 0, -3, 0], [1, 0, 1, 0]]))

    def forward(self, x):
        return self.head(self.probe(self.stem(x)))


def mixed_sign_net() -> nn.Module:
    return MixedSignNet()


def dark_opponent_net() -> nn.Module:
    return DarkOpponentNet()


# -- Linear units over tokens and positions ------------------------------------------------------

def tiny_vit() -> nn.Module:
    """torchvision's VisionTransformer at 16 x 16 (4 x 4 patches: 16 tokens and the class token), 2 blocks, random
    weights; its head starts at zero (torchvision's choice), so it is given random values: every attribution
    would be zero otherwise."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=12,
                              num_classes=3)
    nn.init.normal_(model.heads.head.weight)
    return model


def tiny_convnext() -> nn.Module:
    """torchvision's ConvNeXt with two stages of one block (8 and 16 channels), random weights: a block's
    `block.3` is a Linear over channels-last positions (N x H x W x D)."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3)


class GrayTokenNet(nn.Module):
    """1 x H x W (grayscale) -> 3 logits: a conv, then `mix`, a Linear over the pixels as positions (N x H x W x 4)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.mix(self.stem(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


def gray_token_net() -> nn.Module:
    torch.manual_seed(0)
    return GrayTokenNet()


class TwiceLinearNet(nn.Module):
    """Tokens (one per pixel) through the same Linear `shared` twice: a layer used twice in one forward pass."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)
        return self.head(self.shared(self.shared(tokens)).mean(1))


def twice_linear_net() -> nn.Module:
    torch.manual_seed(0)
    return TwiceLinearNet()


class SequenceFirstNet(nn.Module):
    """Tokens on dim 0 and the batch on dim 1 (T x N x D), as CLIP's reference code runs its transformer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        tokens = x.flatten(2).permute(2, 0, 1)  # T x N x 3
        return self.head(self.fc(tokens).mean(0))


def sequence_first_net() -> nn.Module:
    torch.manual_seed(0)
    return SequenceFirstNet()


class ColourTransformer(nn.Module):
    """ColourNet's known answer in a transformer: the Linear unit of interest serves red and green through
    different inputs.

    tokens: a zero class token, then one token per pixel from a 1x1 patch embedding with ReLU (R, G and B
    detectors: the MLP's inputs 0, 1, 2, never negative); one block whose attention is zero (the residual passes
    the tokens on) and whose MLP is fc1 (3 -> 3, no bias, the layer of interest `block.fc1`) -> GELU -> fc2
    (identity):
      unit 0 = R + G   polysemantic: serves red and green through different inputs
      unit 1 = B       monosemantic (blue)
      unit 2 = R       monosemantic (red)
    head: the MLP's output averaged over the tokens, logits blue = u1, green = 2 u0 - 3 u2, red = u0 + u2.
    """

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 3, 1, bias=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, 3))
        self.attention = nn.MultiheadAttention(3, 1, batch_first=True)
        self.block = nn.ModuleDict({"fc1": nn.Linear(3, 3, bias=False), "gelu": nn.GELU(),
                                    "fc2": nn.Linear(3, 3, bias=False)})
        self.head = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            for parameter in self.attention.parameters():
                parameter.zero_()
            self.block["fc1"].weight.copy_(torch.tensor([[1.0, 1, 0], [0, 0, 1], [1, 0, 0]]))
            self.block["fc2"].weight.copy_(torch.eye(3))
            self.head.weight.copy_(torch.tensor([[0.0, 1, 0], [2, 0, -3], [1, 0, 1]]))

    def forward(self, x):
        tokens = torch.relu(self.embed(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        mlp = self.block["fc2"](self.block["gelu"](self.block["fc1"](tokens)))
        return self.head(mlp.mean(1))


def colour_transformer() -> nn.Module:
    return ColourTransformer()
