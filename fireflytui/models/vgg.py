"""VGG with batch norm in its CIFAR form: 3x3 convs, five max-pools, one linear classifier."""

from __future__ import annotations

from torch import nn

from fireflytui.architecture import Architecture
from fireflytui.models.net import GrowableNet, Unit

# Convs per stage; a max-pool follows every stage.
STAGES = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def build_vgg(arch: Architecture) -> GrowableNet:
    stages = STAGES[arch.name]
    channels, height, width = arch.input_shape
    layers: list[nn.Module] = []
    producers: list[int] = []
    widths = iter(arch.widths)
    in_channels = channels
    for convs in stages:
        for _ in range(convs):
            out_channels = next(widths)
            producers.append(len(layers))
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        layers.append(nn.MaxPool2d(2))
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ValueError(f"input {arch.input_shape} is too small for five 2x2 max-pools")
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, arch.num_classes)]

    consumers = producers[1:] + [len(layers) - 1]
    units = [
        Unit(f"conv{i + 1}", producer=p, chain=(p + 1,), consumer=c)
        for i, (p, c) in enumerate(zip(producers, consumers, strict=True))
    ]
    return GrowableNet(arch, layers, units)


def vgg_unit_count(name: str) -> int:
    return sum(STAGES[name])
