"""The monitor's dialogs: confirm a command, set eta_t, and the help screen."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from fireflytui.history import COPY, KEPT, NEW, SPLIT
from fireflytui.settings import SettingError, parse_settings


class ConfirmScreen(ModalScreen[bool]):
    """Asks yes or no before a command that changes the network or ends the run."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.question, "bold"))
            if self.detail:
                yield Label(self.detail)
            yield Label(Text("y / enter: yes    n / escape: no", "dim"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class EtaScreen(ModalScreen[None]):
    """A form for eta_t: checks the value as it is typed, sends it, shows the trainer's answer."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, current: str, send: Callable[[dict, Callable[[dict], None]], None]) -> None:
        super().__init__()
        self.current = current
        self.send = send  # send({"eta": n}, on_reply)
        self.sent = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text("Set eta_t: neurons added by each grow step", "bold"))
            yield Label(f"now: {self.current}; 0 hands the budget back to growth.ratio")
            yield Input(placeholder="neurons, e.g. 24", id="eta-input")
            yield Label("", id="eta-answer")
            yield Label(Text("enter: send    escape: close", "dim"))

    def _answer(self, text: str, style: str = "") -> None:
        self.query_one("#eta-answer", Label).update(Text(text, style))

    def _check(self, value: str) -> int | None:
        if not value.strip():
            self._answer("type a number of neurons, or escape to close", "bold red")
            return None
        try:
            return parse_settings({"eta": value})["eta"]
        except SettingError as e:
            self._answer(str(e), "bold red")
            return None

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.value.strip():
            if self._check(event.value) is not None:
                self._answer("enter sends it to the trainer", "dim")
        else:
            self._answer("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        eta = self._check(event.value)
        if eta is None:
            return
        self._answer(f"sent eta={eta}; the trainer applies it at the next step boundary...")
        self.send({"eta": eta}, self.on_reply)

    def on_reply(self, reply: dict) -> None:
        if reply.get("ok"):
            settings = reply.get("settings") or {}
            self._answer(
                f"trainer: accepted at step {reply.get('applied_step')}, eta_t = "
                f"{settings.get('eta', '?')} neurons",
                "bold green",
            )
        else:
            self._answer(f"trainer refused: {reply.get('error')}", "bold red")

    def action_close(self) -> None:
        self.dismiss(None)


HELP = """\
Keys
  p       pause, or continue a paused run
  g       force a grow step now, with the current eta_t (asks first)
  e       set eta_t, the neurons each grow step adds
  c       save a checkpoint now
  s       stop: save a checkpoint and end the run (asks first)
  v 1 2 3 small terminals: next view, or overview, grow steps, log
  tab     next panel; up/down in the grow steps choose a round
  ctrl+p  command palette     ?  this help     q  quit the app

The trainer applies a command at its next step boundary and answers
in a notification and in the event log. A dimmed key does nothing now:
the run is read-only (it has ended) or that command is on its way.

Panels
  progress        training loss (per log interval), test accuracy
                  (per epoch), each with its current and best value
  layer widths    per unit: █ width at the start, ▒ grown since
  grow steps      per round: params before→after, neurons split+new,
                  loss change predicted by the scores and measured
  neurons chosen  the highlighted round, per unit: {kept} kept,
                  {split} split, {copy} copy of a split one, {new} new

Quitting the app, or losing the connection, leaves training running;
`fireflytui attach RUN` opens the monitor again with the whole history.
"""


class HelpScreen(ModalScreen[None]):
    """What every key does and how to read the panels."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        text = HELP.format(kept=KEPT, split=SPLIT, copy=COPY, new=NEW)
        with Vertical(classes="dialog help"):
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)
