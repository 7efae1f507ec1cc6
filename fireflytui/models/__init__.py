"""Growable model families, built from an `Architecture`."""

from __future__ import annotations

from fireflytui.architecture import Architecture
from fireflytui.models.mlp import build_mlp
from fireflytui.models.mobilenet import FULL_WIDTHS, build_mobilenet
from fireflytui.models.net import GrowableNet, Unit
from fireflytui.models.vgg import STAGES, build_vgg

MODEL_NAMES = (*STAGES, "mobilenetv1", "mlp")

__all__ = ["MODEL_NAMES", "GrowableNet", "Unit", "build_model", "default_architecture"]


def build_model(arch: Architecture) -> GrowableNet:
    """Build the network `arch` describes, with freshly initialised weights."""
    if arch.name in STAGES:
        return build_vgg(arch)
    if arch.name == "mobilenetv1":
        return build_mobilenet(arch)
    if arch.name == "mlp":
        return build_mlp(arch)
    raise ValueError(f"unknown model {arch.name!r}; known: {', '.join(MODEL_NAMES)}")


def default_architecture(
    name: str,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (3, 32, 32),
    width: int | None = None,
    widths: list[int] | None = None,
    depth: int = 2,
    **options,
) -> Architecture:
    """The starting architecture of a family: `width` neurons in every unit, or `widths`.

    VGG starts at 16 channels per layer (the paper's start); MobileNetV1 at its standard
    widths scaled by width/32; the MLP at `depth` hidden layers of `width` units.
    """
    if name in STAGES:
        count = sum(STAGES[name])
        widths = widths or [width or 16] * count
    elif name == "mobilenetv1":
        scale = (width or 32) / FULL_WIDTHS[0]
        widths = widths or [max(1, round(w * scale)) for w in FULL_WIDTHS]
    elif name == "mlp":
        widths = widths or [width or 64] * depth
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return Architecture(name, tuple(widths), num_classes, tuple(input_shape), options)
