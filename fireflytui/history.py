"""What the monitor knows of a run, folded from its event log, in memory bounded however long it is.

Standard library only: the app builds it from `events.jsonl` without importing torch or the trainer,
and the tests and benchmarks build it without Textual.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fireflytui.settings import SettingError, parse_settings
from fireflytui.table import command_text, printable

LIVE_STATES = ("starting", "running", "paused", "growing")

# What each event type can change, so that a reader redraws only that.
CHANGES = {
    "start": ("state", "metrics", "widths", "rounds"),
    "train": ("metrics",),
    "epoch": ("metrics", "widths"),
    "grow": ("widths", "rounds"),
    "checkpoint": (),
}

# Neuron marks in a grow step's strip: distinct characters, so the strip reads without colour.
KEPT, SPLIT, COPY, NEW = "·", "◆", "◇", "+"


class Series:
    """A metric over time, kept to at most `capacity` points.

    When full, neighbouring points are averaged in pairs and each point then stands for twice as
    many events: older history is downsampled evenly, the last value and the best stay exact.
    """

    def __init__(self, capacity: int = 256, *, better: str = "min"):
        self.capacity = capacity - capacity % 2
        self.better = better  # "min" for a loss, "max" for an accuracy
        self.values: list[float] = []  # one mean per bucket of `span` events
        self.span = 1  # events per point
        self.count = 0  # events seen
        self.last: float | None = None
        self.best: float | None = None
        self._sum = 0.0
        self._n = 0

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.count += 1
        self.last = value
        if self.best is None or (value < self.best if self.better == "min" else value > self.best):
            self.best = value
        self._sum += value
        self._n += 1
        if self._n < self.span:
            return
        self.values.append(self._sum / self._n)
        self._sum, self._n = 0.0, 0
        if len(self.values) >= self.capacity:
            pairs = zip(self.values[0::2], self.values[1::2], strict=True)
            self.values = [(a + b) / 2 for a, b in pairs]
            self.span *= 2

    def points(self) -> list[float]:
        """The points to draw, the partly filled last bucket included."""
        return self.values + ([self._sum / self._n] if self._n else [])


@dataclass
class UnitGrowth:
    """What one grow step did to one unit."""

    name: str
    width_before: int
    width_after: int
    split: tuple[int, ...]  # indices, before the step, of the neurons that were split
    new: int  # new neurons added

    def strip(self) -> str:
        """The unit's neurons after the step: kept, split, the split neurons' copies, new ones."""
        marks = [KEPT] * self.width_before
        for i in self.split:
            if 0 <= i < self.width_before:
                marks[i] = SPLIT
        return "".join(marks) + COPY * len(self.split) + NEW * self.new


@dataclass
class GrowRound:
    """One grow step, as its `grow` event tells it."""

    round: int
    epoch: int
    step: int
    trigger: str
    method: str
    eta: int
    seconds: float
    params_before: int
    params_after: int
    predicted_loss_change: float | None
    measured_loss_change: float | None
    units: list[UnitGrowth]
    error: str | None = None
    seq: int = 0  # of its event: unique, where a failed step repeats the last round number

    @property
    def split(self) -> int:
        return sum(len(u.split) for u in self.units)

    @property
    def new(self) -> int:
        return sum(u.new for u in self.units)


@dataclass
class LogLine:
    time: float
    kind: str  # start, grow, checkpoint, control, state, end, error, app
    text: str


@dataclass
class RunHistory:
    """A run's state and history as the monitor shows it; `apply` folds in each event in order."""

    name: str = ""
    state: str = "starting"  # the trainer's last state, or the end status
    error: str | None = None
    live: bool | None = None  # whether a trainer holds the run's lock; None until checked
    architecture: str = ""
    units: list[str] = field(default_factory=list)
    start_widths: list[int] = field(default_factory=list)  # at the run's first start
    widths: list[int] = field(default_factory=list)
    params: int = 0
    device: str = ""
    epoch: int = 0  # epochs completed
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    batch_size: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    images_per_second: float | None = None
    best_acc: float | None = None
    rounds: list[GrowRound] = field(default_factory=list)
    train_loss: Series = field(default_factory=lambda: Series(better="min"))
    test_acc: Series = field(default_factory=lambda: Series(better="max"))
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=400))
    logged: int = 0  # log lines ever added, so a reader can tell which are new
    events: int = 0
    changed: set[str] = field(default_factory=set)  # what changed since `take_changes`
    last_seq: int = 0
    last_time: float | None = None
    # Wall-clock accounting: finished trainer segments (one per start event) and the current one.
    _done_seconds: float = 0.0
    _segment_start: float | None = None
    _segment_step: int = 0
    _paused_since: float | None = None
    _paused_seconds: float = 0.0

    MAX_ROUNDS = 2000  # grow steps kept in full; older ones are dropped from the table

    @classmethod
    def from_events(cls, events: list[dict[str, Any]], name: str = "") -> RunHistory:
        history = cls(name=name)
        for event in events:
            history.apply(event)
        return history

    # Folding events

    def apply(self, event: dict[str, Any]) -> None:
        """Folds one event in; an event with missing or odd fields is taken as far as it goes."""
        kind = event.get("type")
        self.events += 1
        self.last_seq = event.get("seq", self.last_seq)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            try:
                handler(event)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError):
                self.note(f"unreadable {kind} event (seq {event.get('seq')})", "error")
        now = event.get("time")
        if isinstance(now, (int, float)):
            self.last_time = float(now)  # after the handler, which may need the previous time
        self.changed.update(CHANGES.get(kind, ("state",)))

    def take_changes(self) -> set[str]:
        """What changed since the last call: `state`, `metrics`, `widths`, `rounds`, `log`."""
        changed, self.changed = self.changed, set()
        return changed

    def note(self, text: str, kind: str = "app", at: float | None = None) -> None:
        """Adds a line to the event log panel."""
        self.log.append(LogLine(time.time() if at is None else at, kind, text))
        self.logged += 1
        self.changed.add("log")

    def _on_start(self, e: dict[str, Any]) -> None:
        self._close_segment(self.last_time)  # a killed trainer's segment ends at its last event
        arch = e.get("architecture") or {}
        units = arch.get("units") or []
        self.units = [u["name"] for u in units]
        self.widths = [int(u["width"]) for u in units]
        if not self.start_widths or len(self.start_widths) != len(self.widths):
            self.start_widths = list(self.widths)
        self.architecture = arch.get("name", "")
        self.params = e.get("params", self.params)
        self.device = e.get("device", "")
        self.epochs = e.get("epochs", self.epochs)
        self.steps_per_epoch = e.get("steps_per_epoch", self.steps_per_epoch)
        self.batch_size = ((e.get("config") or {}).get("data") or {}).get("batch_size", 0)
        self.settings = dict(e.get("settings") or {})
        progress = e.get("progress") or {}
        self.epoch = progress.get("epoch", self.epoch)
        self.step = progress.get("step", self.step)
        self.best_acc = progress.get("best_acc") or self.best_acc
        self.state, self.error = "running", None
        self._segment_start, self._segment_step = e.get("time"), self.step
        resumed = e.get("resumed_from")
        origin = f"resumed from {Path(resumed).name}" if resumed else "started"
        self.note(
            f"{origin} on {self.device}: {self.architecture}, {self.params:,} params, "
            f"{self.epochs} epochs",
            "start",
            e.get("time"),
        )

    def _on_train(self, e: dict[str, Any]) -> None:
        self.step = e.get("step", self.step)
        self.images_per_second = e.get("images_per_second", self.images_per_second)
        self.train_loss.add(e.get("loss"))

    def _on_epoch(self, e: dict[str, Any]) -> None:
        self.epoch = e.get("epoch", self.epoch)
        self.step = e.get("step", self.step)
        self.params = e.get("params", self.params)
        self.best_acc = e.get("best_acc", self.best_acc)
        if e.get("widths"):
            self.widths = [int(w) for w in e["widths"]]
        self.test_acc.add(e.get("test_acc"))

    def _on_grow(self, e: dict[str, Any]) -> None:
        units = [
            UnitGrowth(
                u["name"],
                int(u["width_before"]),
                int(u["width_after"]),
                tuple(u.get("split") or ()),
                int(u.get("new", 0)),
            )
            for u in e.get("units") or []
        ]
        grow = GrowRound(
            round=e.get("round", len(self.rounds) + 1),
            epoch=e.get("epoch", self.epoch),
            step=e.get("step", self.step),
            trigger=e.get("trigger", ""),
            method=e.get("method", ""),
            eta=e.get("eta", 0),
            seconds=e.get("seconds") or 0.0,
            params_before=e.get("params_before", self.params),
            params_after=e.get("params_after", self.params),
            predicted_loss_change=e.get("predicted_loss_change"),
            measured_loss_change=e.get("measured_loss_change"),
            units=units,
            error=e.get("error"),
            seq=e.get("seq", self.events),
        )
        self.rounds.append(grow)
        if len(self.rounds) > self.MAX_ROUNDS:
            del self.rounds[0]
        if grow.error:
            self.note(f"grow step {grow.round} failed, network unchanged: {grow.error}", "error")
            return
        self.params = grow.params_after
        if units and [u.name for u in units] == self.units:
            self.widths = [u.width_after for u in units]
        self.note(
            f"grow step {grow.round} ({grow.trigger}): +{grow.eta} neurons "
            f"({grow.split} split, {grow.new} new), {grow.params_before:,} -> "
            f"{grow.params_after:,} params, loss change predicted "
            f"{signed(grow.predicted_loss_change)} measured {signed(grow.measured_loss_change)}",
            "grow",
            e.get("time"),
        )

    def _on_checkpoint(self, e: dict[str, Any]) -> None:
        if e.get("error"):
            self.note(f"checkpoint failed: {e['error']}", "error", e.get("time"))
            return
        size = e.get("bytes") or 0
        self.note(
            f"checkpoint {Path(e.get('path', '')).name} ({size / 1e6:.1f} MB)",
            "checkpoint",
            e.get("time"),
        )

    def _on_control(self, e: dict[str, Any]) -> None:
        command, args = e.get("command", "?"), e.get("args") or {}
        shown = command_text(e)
        if e.get("ok"):
            if command == "set":
                try:
                    self.settings.update(parse_settings(args))
                except SettingError:
                    pass
            self.note(f"{shown}: done at step {e.get('applied_step')}", "control", e.get("time"))
        else:
            self.note(f"{shown}: refused: {printable(e.get('error'))}", "control", e.get("time"))

    def _on_state(self, e: dict[str, Any]) -> None:
        state, now = e.get("state", self.state), e.get("time")
        if state == "paused" and self._paused_since is None:
            self._paused_since = now
        elif state != "paused" and self._paused_since is not None and now is not None:
            self._paused_seconds += now - self._paused_since
            self._paused_since = None
        if "paused" in (state, self.state) and state != self.state:
            self.note(state, "state", now)
        self.state = state

    def _on_end(self, e: dict[str, Any]) -> None:
        self.state, self.error = e.get("status", "finished"), e.get("error")
        self._close_segment(e.get("time"))
        text = self.state + (f": {self.error}" if self.error else "")
        self.note(text, "error" if self.state == "failed" else "end", e.get("time"))

    def _close_segment(self, at: float | None) -> None:
        if self._segment_start is not None and at is not None:
            self._done_seconds += max(0.0, at - self._segment_start)
        self._segment_start = None
        self._paused_since, self._paused_seconds = None, 0.0

    # What the status line shows

    @property
    def shown_state(self) -> str:
        """The state, with a trainer that died without an end event shown as failed."""
        if self.live is False and self.state in LIVE_STATES:
            return "failed"
        return self.state

    @property
    def is_live(self) -> bool:
        return bool(self.live) and self.shown_state in LIVE_STATES

    def elapsed(self, now: float | None = None) -> float:
        """Wall-clock seconds the run's trainers have run, across resumes."""
        seconds = self._done_seconds
        if self._segment_start is not None:
            end = now if (now is not None and self.live) else self.last_time
            seconds += max(0.0, (end or self._segment_start) - self._segment_start)
        return seconds

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left at this segment's pace (evaluation and grow steps included), or None."""
        total = self.epochs * self.steps_per_epoch
        if self._segment_start is None or self.last_time is None or not total:
            return None
        done = self.step - self._segment_step
        paused = self._paused_seconds
        if self._paused_since is not None:
            paused += (now or self.last_time) - self._paused_since
        spent = self.last_time - self._segment_start - paused
        if done <= 0 or spent <= 0:
            return None
        return max(0, total - self.step) * spent / done

    def eta_t(self) -> tuple[int, str]:
        """The next grow step's eta_t in neurons, and where it comes from."""
        eta = int(self.settings.get("eta") or 0)
        if eta > 0:
            return eta, "eta"
        ratio = float(self.settings.get("ratio") or 0.0)
        return max(1, round(ratio * sum(self.widths))), f"ratio {ratio:g}"

    def grown(self) -> list[int]:
        """Neurons each unit gained since the run's first start."""
        if len(self.start_widths) != len(self.widths):
            return [0] * len(self.widths)
        return [max(0, w - s) for w, s in zip(self.widths, self.start_widths, strict=True)]


def signed(value: float | None) -> str:
    """A loss change as the monitor writes it: `+0.0123`, or `n/a` when there is none."""
    return "n/a" if value is None else f"{value:+.4f}"
