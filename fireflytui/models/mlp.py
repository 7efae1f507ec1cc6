"""A multilayer perceptron for flattened inputs such as MNIST; every hidden layer grows."""

from __future__ import annotations

import math

from torch import nn

from fireflytui.architecture import Architecture
from fireflytui.models.net import GrowableNet, Unit


def build_mlp(arch: Architecture) -> GrowableNet:
    batch_norm = bool(arch.options.get("batch_norm", False))
    layers: list[nn.Module] = [nn.Flatten()]
    producers, chains = [], []
    in_features = math.prod(arch.input_shape)
    for width in arch.widths:
        producers.append(len(layers))
        layers.append(nn.Linear(in_features, width))
        chains.append([len(layers)] if batch_norm else [])
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU(inplace=True))
        in_features = width
    layers.append(nn.Linear(in_features, arch.num_classes))

    consumers = producers[1:] + [len(layers) - 1]
    units = [
        Unit(f"fc{i + 1}", producer=p, chain=tuple(chain), consumer=c)
        for i, (p, chain, c) in enumerate(zip(producers, chains, consumers, strict=True))
    ]
    return GrowableNet(arch, layers, units)
