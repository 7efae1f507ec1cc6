"""The monitor app: replays a run's event log, then follows it, and sends commands to its trainer.

It knows the run only through its directory: `events.jsonl`, the trainer's lock, and
`control.sock`. A thread reads the log and posts batches of events; the app folds them into a
`RunHistory` and redraws the panels at most `REDRAW_HZ` times a second.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer
from textual.worker import get_current_worker

from fireflytui.app.dialogs import ConfirmScreen, EtaScreen, HelpScreen
from fireflytui.app.panels import (
    EventLogPanel,
    GrowTable,
    NeuronStrips,
    Sparks,
    StatusLine,
    WidthsPanel,
)
from fireflytui.control import ControlError, send_command
from fireflytui.events import EventReader
from fireflytui.history import LIVE_STATES, GrowRound, RunHistory
from fireflytui.rundir import is_live

NICE = 10  # added to the monitor's niceness: the trainer is served first
REDRAW_HZ = 2  # redraws per second at most, however fast events arrive
POLL_SECONDS = 0.25  # between reads of the event log once it has been replayed
LIVE_CHECK_SECONDS = 1.0  # between checks that the trainer still holds its lock
CHUNK_BYTES = 1 << 20  # of the log per batch; at most two batches wait for the app
NARROW = (100, 28)  # below this many columns or rows, panels fold into views

# Seconds to wait for an answer: a grow step is answered when it is done.
TIMEOUTS = {"grow": 3600.0, "stop": 600.0}
CONTROL_ACTIONS = ("pause", "resume", "grow", "eta", "checkpoint", "stop")
PALETTE = (
    ("pause", "Pause training", "Stop taking steps until continued"),
    ("resume", "Continue training", "Take steps again"),
    ("grow", "Grow now", "Force a grow step with the current eta_t"),
    ("eta", "Set eta_t", "Neurons each grow step adds"),
    ("checkpoint", "Checkpoint now", "Save a user checkpoint"),
    ("stop", "Stop training", "Save a checkpoint and end the run"),
)

Sender = Callable[..., dict]


class EventsRead(Message):
    """A batch of events read from the log, in order."""

    def __init__(self, events: list[dict]) -> None:
        super().__init__()
        self.events = events


class CaughtUp(Message):
    """The reader has reached the end of the log once: the replay is over."""


class RunGone(Message):
    """The run directory no longer exists."""


class Liveness(Message):
    """Whether a trainer holds the run's lock."""

    def __init__(self, live: bool) -> None:
        super().__init__()
        self.live = live


class MonitorApp(App[str | None]):
    """Shows one run and steers its trainer."""

    CSS_PATH = "monitor.tcss"
    TITLE = "fireflytui"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Continue"),
        Binding("g", "grow", "Grow"),
        Binding("e", "eta", "eta_t"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("s", "stop", "Stop"),
        Binding("v", "next_view", "View"),
        Binding("1", "view('overview')", "Overview", show=False),
        Binding("2", "view('growth')", "Grow steps", show=False),
        Binding("3", "view('log')", "Log", show=False),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        run_dir: str | Path,
        *,
        send: Sender = send_command,
        live: Callable[[Path], bool] = is_live,
    ) -> None:
        # NO_COLOR: the terminal's own colours and no others; bold, dim and reverse remain.
        self.plain = "NO_COLOR" in os.environ
        super().__init__(ansi_color=True if self.plain else None)
        self.run_dir = Path(run_dir)
        self.history = RunHistory(name=self.run_dir.name)
        self.send = send  # send(run_dir, command, args, timeout=...) -> reply dict
        self.live = live
        self.pending: set[str] = set()  # commands sent and not yet answered
        self.view = "overview"
        self.narrow = False
        self.replayed = threading.Event()  # set once the whole log has been shown
        self._ticks = 0
        self._batches = threading.Semaphore(2)  # batches read ahead of the app, at most
        self._selected: int | None = None  # `seq` of the round shown in the strips; None: latest
        self._ended_noted = False

    def compose(self) -> ComposeResult:
        # The panels are held, not queried: a dialog on top takes over the app's queries.
        self.status = StatusLine(id="status")
        self.sparks = Sparks(id="sparks")
        self.widths = WidthsPanel(id="widths")
        self.table = GrowTable(id="rounds")
        self.strips = NeuronStrips(id="strips")
        self.log_panel = EventLogPanel(id="log")
        yield self.status
        with Container(id="main") as self.main:
            with Vertical(id="left"):
                yield self.sparks
                yield self.widths
            with Vertical(id="right"):
                yield self.table
                yield self.strips
                yield self.log_panel
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        if self.plain:
            self.theme = "ansi-dark"
        self.sparks.border_title = "progress"
        self.widths.border_title = "layer widths"
        self.widths.border_subtitle = "█ start ▒ grown"
        self.table.border_title = "grow steps"
        self.table.border_subtitle = "loss change: pred(icted) meas(ured)"
        self.log_panel.border_title = "event log"
        self._layout(self.size.width, self.size.height)
        self.set_interval(1 / REDRAW_HZ, self._redraw)
        self._follow()

    # Reading the run

    @work(thread=True, exclusive=True, group="reader", name="event log reader")
    def _follow(self) -> None:
        """Posts the log's events in batches, then new ones as they come, and the trainer's life."""
        worker = get_current_worker()
        reader = EventReader(self.run_dir)
        alive, checked, caught_up = None, 0.0, False
        while not worker.is_cancelled:
            now = time.monotonic()
            if now - checked >= LIVE_CHECK_SECONDS:
                if not self.run_dir.is_dir():
                    self.post_message(RunGone())
                    return
                checked, was = now, alive
                alive = self.live(self.run_dir)
                if alive != was:
                    self.post_message(Liveness(alive))
            events = reader.read(CHUNK_BYTES)
            if events:
                while not self._batches.acquire(timeout=0.5):
                    if worker.is_cancelled:
                        return
                self.post_message(EventsRead(events))
                continue
            if not caught_up:
                caught_up = True
                self.post_message(CaughtUp())
            time.sleep(POLL_SECONDS)

    def on_events_read(self, message: EventsRead) -> None:
        for event in message.events:
            self.history.apply(event)
        self._batches.release()

    def on_caught_up(self, message: CaughtUp) -> None:
        self.replayed.set()
        self.history.changed.update(("state", "metrics", "widths", "rounds", "log"))
        self._redraw()

    def on_liveness(self, message: Liveness) -> None:
        h = self.history
        died = h.live and not message.live and h.state in LIVE_STATES
        h.live = message.live
        h.changed.add("state")
        if died:  # the lock went with the process: killed, or out of memory, or its machine
            h.note(
                "the trainer is gone without an end event (killed?); its checkpoints stay: "
                "resume with fireflytui train --resume RUN",
                "error",
            )
            self.notify("the trainer is gone: the run has failed", severity="error", timeout=8)

    def on_run_gone(self, message: RunGone) -> None:
        self.exit(f"the run directory {self.run_dir} was deleted; the monitor has closed", 1)

    # Drawing

    def _redraw(self) -> None:
        """Redraws the panels whose part of the history changed; the status clock ticks at 1 Hz."""
        h = self.history
        self._ticks += 1
        if not self.replayed.is_set():  # the panels are drawn once, when the replay is over
            if self._ticks % REDRAW_HZ == 0:
                self.status.show(h, replaying=True)
            return
        changed = h.take_changes()
        if changed or self._ticks % REDRAW_HZ == 0:
            self.status.show(h)
        if "metrics" in changed:
            self.sparks.show(h)
        if "widths" in changed:
            self.widths.show(h)
        if "rounds" in changed:
            self.table.show(h)
            self.strips.show(self.shown_round())
        if "log" in changed:
            self.log_panel.show(h)
        if "state" in changed:
            self.refresh_bindings()
        if not h.is_live and h.live is not None and h.events and not self._ended_noted:
            self._ended_noted = True
            self.notify(f"run {h.shown_state}: read-only", timeout=4)

    def shown_round(self) -> GrowRound | None:
        """The round drawn in the neurons panel: the one chosen in the table, else the latest."""
        rounds = self.history.rounds
        if not rounds:
            return None
        if self._selected is not None:
            for grow in rounds:
                if grow.seq == self._selected:
                    return grow
        return rounds[-1]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None or event.row_key.value is None:
            return
        rounds = self.history.rounds
        chosen = int(event.row_key.value)
        self._selected = None if rounds and chosen == rounds[-1].seq else chosen
        self.strips.show(self.shown_round())

    def on_resize(self, event: events.Resize) -> None:
        self._layout(event.size.width, event.size.height)

    def _layout(self, width: int, height: int) -> None:
        if not self.is_mounted(self.main):
            return
        narrow = width < NARROW[0] or height < NARROW[1]
        main = self.main
        main.set_class(narrow, "narrow")
        for view in ("overview", "growth", "log"):
            main.set_class(view == self.view, f"view-{view}")
        self.history.changed.update(("widths", "rounds"))  # drawn to the new width
        if narrow != self.narrow:
            self.narrow = narrow
            self.refresh_bindings()

    # Which keys do something now

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """True: enabled; None: shown dimmed; False: hidden."""
        if action in ("view", "next_view"):
            return self.narrow
        if action not in CONTROL_ACTIONS:
            return True
        h = self.history
        paused = h.shown_state == "paused"
        if action == "pause" and paused:
            return False
        if action == "resume" and not paused:
            return False
        if not h.is_live or action in self.pending or ("stop" in self.pending):
            return None
        if action == "grow" and h.shown_state == "growing":
            return None
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for action, title, help in PALETTE:
            if self.check_action(action, ()):
                yield SystemCommand(title, help, getattr(self, f"action_{action}"))

    # Actions

    def action_pause(self) -> None:
        self.command("pause")

    def action_resume(self) -> None:
        self.command("continue")

    def action_grow(self) -> None:
        eta, source = self.history.eta_t()
        self.push_screen(
            ConfirmScreen(
                "Force a grow step now?",
                f"eta_t = {eta} neurons ({source}); training waits until it is done.",
            ),
            lambda yes: self.command("grow") if yes else None,
        )

    def action_eta(self) -> None:
        eta, source = self.history.eta_t()
        current = f"{eta} neurons ({source})"
        self.push_screen(EtaScreen(current, lambda args, done: self.command("set", args, done)))

    def action_checkpoint(self) -> None:
        self.command("checkpoint")

    def action_stop(self) -> None:
        self.push_screen(
            ConfirmScreen(
                "Stop training?",
                "The trainer saves a checkpoint and ends; `fireflytui train --resume RUN` "
                "continues it.",
            ),
            lambda yes: self.command("stop") if yes else None,
        )

    def action_view(self, view: str) -> None:
        self.view = view
        self._layout(self.size.width, self.size.height)

    def action_next_view(self) -> None:
        views = ("overview", "growth", "log")
        self.action_view(views[(views.index(self.view) + 1) % len(views)])

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # Talking to the trainer

    def command(
        self, command: str, args: dict | None = None, done: Callable[[dict], None] | None = None
    ) -> None:
        """Sends a command from a thread; its answer comes back to `_answered`."""
        key = "eta" if command == "set" else "resume" if command == "continue" else command
        self.pending.add(key)
        self.refresh_bindings()
        self._send(command, args or {}, key, done)

    @work(thread=True, group="control")
    def _send(self, command: str, args: dict, key: str, done: Callable | None) -> None:
        try:
            reply = self.send(self.run_dir, command, args, timeout=TIMEOUTS.get(command, 120.0))
        except ControlError as e:
            reply = {"ok": False, "error": str(e), "unsent": True}
        self.call_from_thread(self._answered, command, args, key, reply, done)

    def _answered(
        self, command: str, args: dict, key: str, reply: dict, done: Callable | None
    ) -> None:
        self.pending.discard(key)
        self.refresh_bindings()
        shown = " ".join([command, *(f"{k}={v}" for k, v in args.items())])
        if reply.get("ok"):
            self.notify(f"{shown}: done at step {reply.get('applied_step')}", timeout=4)
        else:
            self.notify(f"{shown}: {reply.get('error')}", severity="error", timeout=8)
            if reply.get("unsent"):  # the trainer never saw it, so no control event will say so
                self.history.note(f"{shown}: not sent: {reply.get('error')}", "error")
        if done is not None:
            done(reply)


def run_monitor(run_dir: str | Path, *, mouse: bool = True) -> str | None:
    """Opens the monitor on `run_dir` until the user quits; returns why it closed, if not so.

    The monitor runs at a lower CPU priority than the trainer (nice +NICE): on a machine whose
    cores training keeps busy, the steps come first and the screen waits a moment.
    """
    with suppress(OSError):
        os.nice(NICE)
    return MonitorApp(run_dir).run(mouse=mouse)
