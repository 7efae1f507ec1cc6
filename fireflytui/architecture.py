"""The explicit description a network is built from, and rebuilt from after growth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Architecture:
    """A model family, its per-unit widths (neurons), classes and input shape (C, H, W)."""

    name: str
    widths: tuple[int, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if any(w < 1 for w in self.widths):
            raise ValueError(f"every unit needs at least one neuron, got widths {self.widths}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def with_widths(self, widths: list[int] | tuple[int, ...]) -> Architecture:
        return Architecture(
            self.name, tuple(widths), self.num_classes, self.input_shape, dict(self.options)
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "widths": list(self.widths),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return cls(
            name=data["name"],
            widths=tuple(data["widths"]),
            num_classes=int(data["num_classes"]),
            input_shape=tuple(data["input_shape"]),
            options=dict(data.get("options", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))
