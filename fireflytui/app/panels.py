"""The monitor's panels, one widget each; every one redraws from a `RunHistory` when told to."""

from __future__ import annotations

import time

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Label, RichLog, Sparkline, Static

from fireflytui.history import COPY, KEPT, NEW, SPLIT, GrowRound, RunHistory, Series, signed

STATE_STYLES = {
    "starting": "bold reverse",
    "running": "bold reverse green",
    "paused": "bold reverse yellow",
    "growing": "bold reverse magenta",
    "finished": "bold reverse blue",
    "stopped": "bold reverse",
    "failed": "bold reverse red",
}
MARK_STYLES = {KEPT: "dim", SPLIT: "bold yellow", COPY: "yellow", NEW: "bold green"}
LOG_STYLES = {"grow": "green", "error": "bold red", "control": "cyan", "app": "italic"}


def clock(seconds: float | None) -> str:
    """Seconds as h:mm:ss (or m:ss)."""
    if seconds is None:
        return "--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def compact(count: int) -> str:
    """A parameter count in at most five characters: 4466 -> 4.5k, 1234567 -> 1.2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return str(count)


def _update(widget: Static, text: Text) -> None:
    """Updates `widget`, asking for a new layout (costly) only if its height in rows changed."""
    width = max(1, widget.content_size.width)
    rows = sum(max(1, -(-cell_len(line) // width)) for line in text.plain.split("\n"))
    widget.update(text, layout=rows != getattr(widget, "_rows", None))
    widget._rows = rows


class StatusLine(Static):
    """Run, state, progress, size, eta_t, device, speed, elapsed and remaining time."""

    def show(self, history: RunHistory, replaying: bool = False) -> None:
        h, now = history, time.time()
        if replaying:
            _update(self, Text(f" {h.name}: reading the event log, {h.events:,} events so far"))
            return
        state = h.shown_state
        epoch = h.epoch if state not in ("running", "paused", "growing") else h.epoch + 1
        epoch = min(epoch, h.epochs) if h.epochs else epoch
        total = h.epochs * h.steps_per_epoch
        eta, source = h.eta_t()
        second = [f"eta_t {eta} ({source})", h.device]
        if h.images_per_second is not None:
            second.append(f"{h.images_per_second:,.0f} img/s")
        second.append(f"elapsed {clock(h.elapsed(now))}")
        if h.is_live and state != "paused":
            second.append(f"left ~{clock(h.remaining(now))}")
        line = Text()
        line.append(f" {h.name} ", "bold")
        line.append(f" {state.upper()} ", STATE_STYLES.get(state, "bold reverse"))
        line.append(f"  epoch {epoch}/{h.epochs}  step {h.step:,}/{total:,}  {h.params:,} params")
        line.append("\n " + "  ".join(p for p in second if p) + "  ")
        line.append("live" if h.is_live else "read-only", "dim" if h.is_live else "bold")
        if h.error and state == "failed":
            line.append(f"\n error: {h.error}", "bold red")
        _update(self, line)


class WidthsPanel(Static):
    """One bar per unit: the width at the start, then the part grown since, and the number."""

    def show(self, history: RunHistory) -> None:
        widths, grown = history.widths, history.grown()
        if not widths:
            self.update(Text("waiting for the trainer to start...", "dim"))
            return
        names = history.units or [f"unit{i}" for i in range(len(widths))]
        name_width = max(map(len, names))
        room = max(4, self.content_size.width - name_width - 12)
        top = max(widths)
        text = Text()
        for i, (name, width, extra) in enumerate(zip(names, widths, grown, strict=False)):
            total = max(1, round(width / top * room))
            new = min(total, max(1 if extra else 0, round(extra / top * room)))
            text.append(f"{name:<{name_width}} ")
            text.append("█" * (total - new), "cyan")
            text.append("▒" * new, "bold green")
            text.append(" " * (room - total))
            text.append(f" {width:>4}")
            text.append(f" +{extra:<4}" if extra else "      ", "green")
            if i < len(widths) - 1:
                text.append("\n")
        _update(self, text)


class GrowTable(DataTable):
    """The grow steps so far: one row per round; the highlighted one is drawn below."""

    COLUMNS = ("#", "ep", "by", "params", "split+new", "pred", "meas")

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.add_columns(*self.COLUMNS)
        self._shown: list[int] = []  # the `seq` of each round in the table, in order

    def show(self, history: RunHistory) -> None:
        rounds = history.rounds
        if self._shown and (not rounds or rounds[0].seq != self._shown[0]):
            self.clear()
            self._shown = []
        following = not self._shown or self.cursor_row >= len(self._shown) - 1
        for grow in rounds[len(self._shown) :]:
            self.add_row(*self._cells(grow), key=str(grow.seq))
            self._shown.append(grow.seq)
        if following and self._shown:
            self.move_cursor(row=len(self._shown) - 1)

    @staticmethod
    def _cells(grow: GrowRound) -> tuple[str, ...]:
        if grow.error:
            return (str(grow.round), str(grow.epoch), grow.trigger, "failed", "", "", "")
        return (
            str(grow.round),
            str(grow.epoch),
            grow.trigger,
            f"{compact(grow.params_before)}→{compact(grow.params_after)}",
            f"{grow.split}+{grow.new}",
            signed(grow.predicted_loss_change),
            signed(grow.measured_loss_change),
        )


class NeuronStrips(VerticalScroll):
    """For one round, per unit: its neurons, the split ones marked and the added ones appended."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.body = Static()

    def compose(self) -> ComposeResult:
        yield self.body

    def show(self, grow: GrowRound | None) -> None:
        body = self.body
        if grow is None:
            self.border_title = "neurons chosen"
            body.update(Text("no grow step yet", "dim"))
            return
        self.border_title = f"round {grow.round}: neurons chosen (epoch {grow.epoch})"
        text = Text()
        for mark, label in ((KEPT, "kept"), (SPLIT, "split (s)"), (COPY, "copy"), (NEW, "new (n)")):
            text.append(mark, MARK_STYLES[mark])
            text.append(f" {label}  ")
        if grow.error:
            text.append(f"\nfailed, network unchanged: {grow.error}", "bold red")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for unit in grow.units:
            strip = Text()
            for run in _runs(unit.strip()):
                strip.append(run, MARK_STYLES[run[0]])
            grid.add_row(
                unit.name,
                f"{unit.width_before}→{unit.width_after}",
                f"s{len(unit.split):<3} n{unit.new:<3}",
                strip,
            )
        body.update(Group(text, grid))


def _runs(marks: str) -> list[str]:
    """`marks` cut into runs of one mark, so that each run is styled once."""
    runs: list[str] = []
    for mark in marks:
        if runs and runs[-1][0] == mark:
            runs[-1] += mark
        else:
            runs.append(mark)
    return runs


class Sparks(Vertical):
    """Training loss and test accuracy over the run, with the current and best values."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.loss_label, self.loss_spark = Label(), Sparkline([])
        self.acc_label, self.acc_spark = Label(), Sparkline([])

    def compose(self) -> ComposeResult:
        yield from (self.loss_label, self.loss_spark, self.acc_label, self.acc_spark)

    def show(self, history: RunHistory) -> None:
        loss, acc = history.train_loss, history.test_acc
        _update(self.loss_label, _headline("train loss", loss, "{:.4f}"))
        _update(self.acc_label, _headline("test acc", acc, "{:.2%}"))
        self.loss_spark.data = loss.points()
        self.acc_spark.data = acc.points()


def _headline(name: str, series: Series, spec: str) -> Text:
    """`name last  best best` above a sparkline."""

    def shown(value: float | None) -> str:
        return "--" if value is None else spec.format(value)

    parts = [(name + " ", "bold"), shown(series.last), ("  best ", "dim"), shown(series.best)]
    return Text.assemble(*parts)


class EventLogPanel(RichLog):
    """Grow steps, checkpoints, commands and their answers, errors: the newest at the bottom."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=400, min_width=20, wrap=True, markup=False, **kwargs)
        self._drawn = 0

    def show(self, history: RunHistory) -> None:
        fresh = min(history.logged - self._drawn, len(history.log))
        if fresh <= 0:
            return
        for line in list(history.log)[-fresh:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
            self.write(Text.assemble((stamp + " ", "dim"), (line.text, LOG_STYLES.get(line.kind))))
        self._drawn = history.logged
