"""A network as a flat sequence of layers with declared growable units."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fireflytui.architecture import Architecture


@dataclass(frozen=True)
class Unit:
    """A layer whose output neurons can be added, and the layers that read them.

    `producer` is the conv or linear layer that computes the neurons; `chain` lists the
    per-channel layers with parameters between it and its consumer (its batch norm, and for
    MobileNet the depthwise conv and batch norm that grow with it); `consumer` is the conv
    or linear layer that reads the neurons. All are indices into `GrowableNet.layers`.
    """

    name: str
    producer: int
    chain: tuple[int, ...]
    consumer: int


class GrowableNet(nn.Module):
    """Runs `layers` in order; `units` say which of them grow together."""

    def __init__(self, arch: Architecture, layers: list[nn.Module], units: list[Unit]):
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleList(layers)
        self.units = list(units)
        self._check_units()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def width(self, unit: Unit) -> int:
        layer = self.layers[unit.producer]
        return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features

    def widths(self) -> list[int]:
        return [self.width(u) for u in self.units]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_units(self) -> None:
        """Fail early if a unit's declared layers cannot grow together."""
        for unit, declared in zip(self.units, self.arch.widths, strict=True):
            producer = self.layers[unit.producer]
            consumer = self.layers[unit.consumer]
            if not isinstance(producer, (nn.Conv2d, nn.Linear)) or is_depthwise(producer):
                raise ValueError(f"unit {unit.name}: producer must be a dense conv or linear")
            if not isinstance(consumer, (nn.Conv2d, nn.Linear)) or is_depthwise(consumer):
                raise ValueError(f"unit {unit.name}: consumer must be a dense conv or linear")
            if self.width(unit) != declared:
                raise ValueError(f"unit {unit.name}: width {self.width(unit)} != {declared}")
            for i in range(unit.producer + 1, unit.consumer):
                layer = self.layers[i]
                if i in unit.chain:
                    ok = isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) or is_depthwise(layer)
                else:
                    ok = isinstance(layer, PARAMETER_FREE)
                if not ok:
                    raise ValueError(f"unit {unit.name}: layer {i} ({layer}) cannot grow with it")


PARAMETER_FREE = (
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)


def is_depthwise(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups > 1
        and layer.groups == layer.in_channels == layer.out_channels
    )
