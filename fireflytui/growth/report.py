"""What a grow step did, in a form the event log and the app can carry (plain JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class UnitReport:
    """One unit's part of a grow step; neuron indices are those before the step."""

    name: str
    width_before: int
    width_after: int
    split: list[int]  # neurons split, ascending; each one's second child is appended
    new: int  # new neurons appended after the second children
    split_scores: list[float] = field(default_factory=list)  # per split neuron, loss change
    new_scores: list[float] = field(default_factory=list)  # per new neuron, loss change


@dataclass
class GrowReport:
    method: str
    eta: int  # neurons added, the budget eta_t
    seconds: float
    params_before: int
    params_after: int
    predicted_loss_change: float | None  # sum of the chosen candidates' scores
    measured_loss_change: float | None  # training loss on the held batch, after - before
    loss_before: float | None
    loss_after: float | None
    units: list[UnitReport]
    fit_losses: list[float] = field(default_factory=list)  # over-grown loss per fit step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GrowReport:
        units = [UnitReport(**u) for u in data["units"]]
        return cls(**{**data, "units": units})

    def summary(self) -> str:
        """One fixed-width line, for the headless trainer's table."""
        grown = " ".join(
            f"{u.name}+{u.width_after - u.width_before}"
            for u in self.units
            if u.width_after > u.width_before
        )
        fmt = lambda v: "   n/a" if v is None else f"{v:+.4f}"  # noqa: E731
        return (
            f"grow {self.method:<7} eta {self.eta:>5} params {self.params_before:>9,} -> "
            f"{self.params_after:>9,} predicted {fmt(self.predicted_loss_change)} "
            f"measured {fmt(self.measured_loss_change)} {self.seconds:6.1f}s  {grown}"
        )
