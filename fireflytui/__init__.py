"""fireflytui: grow neural networks with Firefly neural architecture descent.

The public names load lazily, so that the torch-free parts (event log, run directory, control
channel, config) can be imported without torch: the monitor app relies on that.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Architecture": "fireflytui.architecture",
    "GrowReport": "fireflytui.growth",
    "GrowResult": "fireflytui.growth",
    "GrowableNet": "fireflytui.models",
    "GrowthConfig": "fireflytui.growth",
    "UnitReport": "fireflytui.growth",
    "build_model": "fireflytui.models",
    "default_architecture": "fireflytui.models",
    "grow_step": "fireflytui.growth",
    "load_model": "fireflytui.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fireflytui' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
