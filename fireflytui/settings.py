"""The settings a live run accepts from `fireflytui ctl RUN set KEY=VALUE` and the app.

Standard library only, so the app can check a value before sending it; the trainer checks again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

COMMANDS = ("pause", "continue", "grow", "checkpoint", "stop", "set", "status")

SETTABLE = {
    "eta": "eta_t as a neuron count; 0 hands the budget back to ratio",
    "ratio": "eta_t as a fraction of the current neuron count, in (0, 1]",
    "every": "epochs between scheduled grow steps, >= 1",
    "lr": "peak learning rate of the cosine cycle, > 0",
}


class SettingError(ValueError):
    """A refused setting, with the reason in one line."""


@dataclass
class LiveSettings:
    """What a running trainer lets the user change; saved in every checkpoint."""

    eta: int  # neurons per grow step; 0 = use ratio
    ratio: float  # fraction of current neurons per grow step
    every: int  # epochs between scheduled grow steps
    lr: float  # peak learning rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, values: dict[str, Any], *, max_eta: int | None = None) -> LiveSettings:
        """A copy with `values` applied, all checked first: one bad value changes nothing."""
        parsed = parse_settings(values, max_eta=max_eta)
        return LiveSettings(**{**self.to_dict(), **parsed})


def parse_settings(values: dict[str, Any], *, max_eta: int | None = None) -> dict[str, Any]:
    """Checks and converts `values` (strings or numbers), refusing the first bad one."""
    if not values:
        raise SettingError(f"set needs KEY=VALUE; settable: {', '.join(SETTABLE)}")
    out: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in SETTABLE:
            raise SettingError(f"unknown setting {key!r}; settable: {', '.join(SETTABLE)}")
        if key in ("eta", "every"):
            value = _integer(key, raw)
            low = 0 if key == "eta" else 1
            if value < low:
                unit = "neurons" if key == "eta" else "epochs"
                raise SettingError(f"{key} must be an integer >= {low} {unit}, got {_shown(raw)}")
            if key == "eta" and max_eta is not None and value > max_eta:
                raise SettingError(
                    f"eta must be at most {max_eta} neurons (the candidates a grow step can "
                    f"offer now), got {value}"
                )
        else:
            value = _number(key, raw)
            if key == "ratio" and not 0 < value <= 1:
                raise SettingError(f"ratio must be in (0, 1], got {_shown(raw)}")
            if key == "lr" and not value > 0:
                raise SettingError(f"lr must be > 0, got {_shown(raw)}")
        out[key] = value
    return out


def _integer(key: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise SettingError(f"{key} must be an integer, got {_shown(raw)}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    try:
        return int(str(raw).strip())
    except ValueError:
        raise SettingError(f"{key} must be an integer, got {_shown(raw)}") from None


def _number(key: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise SettingError(f"{key} must be a number, got {_shown(raw)}")
    try:
        value = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip())
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise SettingError(f"{key} must be a finite number, got {_shown(raw)}") from None
    if not math.isfinite(value):
        raise SettingError(f"{key} must be a finite number, got {_shown(raw)}")
    return value


def _shown(raw: Any) -> str:
    """A refused value as the reason quotes it: its repr, cut to a readable length."""
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."
