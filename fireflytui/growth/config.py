"""Settings of a grow step, with units."""

from __future__ import annotations

from dataclasses import asdict, dataclass

METHODS = ("firefly", "random", "none")


@dataclass
class GrowthConfig:
    """How a grow step searches; every field maps to a `growth.*` config key."""

    method: str = "firefly"  # firefly | random | none
    split: bool = True  # offer a split candidate for every existing neuron
    new: bool = True  # offer new-neuron candidates
    new_candidates: int = 8  # new-neuron candidates per unit (m'), neurons
    eps_bound: float = 0.3  # bound on |eps|, relative to the layer's weight norms
    fit_steps: int = 20  # Adam steps fitting delta and eps, one batch each
    fit_lr: float = 0.1  # step size of that fit, in units of eps_bound (eps) and of 1 (delta)
    path_points: int = 3  # points on the eps path averaged for the integrated gradient
    batches: int = 8  # training batches a grow step reads: half fit, half score
    noise: float = 0.01  # random baseline: split noise, relative to the neuron's weight norm

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"growth.method must be one of {', '.join(METHODS)}, got {self.method!r}"
            )
        if self.method == "firefly" and not (self.split or self.new):
            raise ValueError("growth.split and growth.new are both off: nothing to grow")
        for name in ("new_candidates", "fit_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"growth.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("path_points", "batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"growth.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eps_bound", "fit_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"growth.{name} must be > 0, got {getattr(self, name)}")
        if self.noise < 0:
            raise ValueError(f"growth.noise must be >= 0, got {self.noise}")

    def to_dict(self) -> dict:
        return asdict(self)
