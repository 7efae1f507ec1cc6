"""MobileNetV1 in its CIFAR form: the stem and pointwise convs grow, and the depthwise conv
that reads a grown conv grows with it (one depthwise filter per channel)."""

from __future__ import annotations

from torch import nn

from fireflytui.architecture import Architecture
from fireflytui.models.net import GrowableNet, Unit

# Stride of each depthwise-separable block (CIFAR form: no stride in the stem).
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
# Widths of the stem and the 13 pointwise convs at width multiplier 1.
FULL_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def build_mobilenet(arch: Architecture) -> GrowableNet:
    channels = arch.input_shape[0]
    widths = list(arch.widths)
    layers: list[nn.Module] = [
        nn.Conv2d(channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    producers, chains = [0], [[1]]
    for block, stride in enumerate(STRIDES):
        c_in, c_out = widths[block], widths[block + 1]
        depthwise = len(layers)
        layers += [
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
        ]
        chains[-1] += [depthwise, depthwise + 1]
        producers.append(len(layers))
        chains.append([len(layers) + 1])
        layers += [
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], arch.num_classes)]

    consumers = producers[1:] + [len(layers) - 1]
    names = ["stem"] + [f"pw{i + 1}" for i in range(len(STRIDES))]
    units = [
        Unit(name, producer=p, chain=tuple(chain), consumer=c)
        for name, p, chain, c in zip(names, producers, chains, consumers, strict=True)
    ]
    return GrowableNet(arch, layers, units)
