"""fireflytui: grow neural networks with Firefly neural architecture descent."""

from fireflytui.architecture import Architecture
from fireflytui.growth import GrowReport, GrowResult, GrowthConfig, UnitReport, grow_step
from fireflytui.models import GrowableNet, build_model, default_architecture

__version__ = "0.1.0"

__all__ = [
    "Architecture",
    "GrowReport",
    "GrowResult",
    "GrowableNet",
    "GrowthConfig",
    "UnitReport",
    "build_model",
    "default_architecture",
    "grow_step",
]
