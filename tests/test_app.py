"""The monitor as a user sees it, driven headless with Textual's pilot at 80x24 and 120x40.

Against a recorded event log (with a stand-in trainer that records what the app sends) and against
a live demo run, whose trainer answers for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from runs import cli
from textual.widgets import Sparkline

from fireflytui.app import MonitorApp
from fireflytui.app.panels import EventLogPanel, GrowTable
from fireflytui.events import read_events
from fireflytui.rundir import is_live

RECORDED = Path(__file__).parent / "data" / "demo-run.jsonl"
SIZES = [(80, 24), (120, 40)]


def recorded_run(tmp_path: Path, upto: int | None = None) -> Path:
    """A run directory holding the recorded log, or its first `upto` events."""
    run = tmp_path / "demo-recorded"
    run.mkdir()
    lines = RECORDED.read_text().splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(lines[:upto]))
    return run


def screen_text(app: MonitorApp) -> str:
    """What the terminal shows now, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def until(pilot, condition, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


def log_text(app: MonitorApp) -> str:
    """Every line in the event log panel, scrolled out of view or not, unwrapped."""
    return " ".join(strip.text.strip() for strip in app.query_one(EventLogPanel).lines)


def expected_strip(unit: dict) -> str:
    """A unit's neurons after a grow step, worked out from the event itself."""
    marks = ["·"] * unit["width_before"]
    for i in unit["split"]:
        marks[i] = "◆"
    return "".join(marks) + "◇" * len(unit["split"]) + "+" * unit["new"]


class StandInTrainer:
    """Records the commands the app sends and answers like the trainer would."""

    def __init__(self, max_eta: int = 500) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.max_eta = max_eta

    def __call__(self, run_dir, command, args=None, *, timeout=60.0) -> dict:
        self.sent.append((command, dict(args or {})))
        if command == "set" and args["eta"] > self.max_eta:
            return {"ok": False, "error": f"eta must be at most {self.max_eta} neurons, got 9999"}
        reply = {"ok": True, "error": None, "applied_step": 316}
        if command == "set":
            reply["settings"] = {"eta": args["eta"], "ratio": 0.4, "every": 1, "lr": 0.05}
        return reply


@pytest.mark.parametrize("size", SIZES)
async def test_a_recorded_run_shows_its_widths_chosen_neurons_sparklines_and_state(tmp_path, size):
    events = read_events(RECORDED)
    grows = [e for e in events if e["type"] == "grow"]
    trainer = StandInTrainer()
    app = MonitorApp(recorded_run(tmp_path), send=trainer, live=lambda run: False)
    async with app.run_test(size=size) as pilot:
        await until(pilot, app.replayed.is_set, what="the replay")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "FINISHED" in text and "epoch 8/8" in text and "41,937 params" in text
        assert "read-only" in text and "eta_t 12 (eta)" in text

        # Layer widths: one bar per unit with its width and what it grew since the start.
        last = grows[-1]["units"]
        for unit, first in zip(last, events[0]["architecture"]["units"], strict=True):
            grown = unit["width_after"] - first["width"]
            line = next(row for row in text.splitlines() if f" {unit['name']} " in row)
            assert f"{unit['width_after']} +{grown}" in line, line

        # Sparklines: every training loss logged, and every epoch's test accuracy.
        loss, acc = app.query(Sparkline)
        assert loss.data == [e["loss"] for e in events if e["type"] == "train"]
        assert acc.data == [e["test_acc"] for e in events if e["type"] == "epoch"]
        assert "test acc 99.90%" in text

        if app.narrow:  # 80x24 folds the panels into views
            assert "grow steps" not in text
            await pilot.press("2")
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "layer widths" not in text
        table = app.query_one(GrowTable)
        assert table.row_count == len(grows)
        assert table.get_row_at(3)[2] == "user" and table.get_row_at(3)[4] == "5+7"

        # The latest round's neurons, then the first round's once it is chosen in the table.
        assert f"round {grows[-1]['round']}: neurons chosen" in text
        for unit in grows[-1]["units"]:
            assert expected_strip(unit) in text.replace("│", "")
        table.focus()
        for _ in range(len(grows) - 1):
            await pilot.press("up")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "round 1: neurons chosen" in text
        strips = text.replace("│", "")
        for unit in grows[0]["units"]:
            assert f"{unit['width_before']}→{unit['width_after']}" in strips
            assert expected_strip(unit) in strips

        if app.narrow:
            await pilot.press("3")
            await pilot.pause(0.2)
        assert "finished" in screen_text(app).split("event log")[1]
        assert "set eta=abc: refused: eta must be an integer" in log_text(app)

        # A finished run is read-only: its controls are dimmed and send nothing.
        bindings = app.screen.active_bindings
        for key in "pgecs":
            assert not bindings[key].enabled, key
        for key in "pgecs":
            await pilot.press(key)
        await pilot.pause(0.2)
        assert trainer.sent == []
        assert bindings["q"].enabled and bindings["question_mark"].enabled


@pytest.mark.parametrize("size", SIZES)
async def test_the_controls_send_their_commands_and_show_the_answers(tmp_path, size):
    upto = next(i for i, line in enumerate(RECORDED.read_text().splitlines()) if '"paused"' in line)
    trainer = StandInTrainer(max_eta=500)
    app = MonitorApp(recorded_run(tmp_path, upto), send=trainer, live=lambda run: True)
    async with app.run_test(size=size) as pilot:
        await until(pilot, app.replayed.is_set, what="the replay")
        await until(pilot, lambda: " live" in screen_text(app), what="liveness")
        assert "RUNNING" in screen_text(app)
        assert app.screen.active_bindings["p"].binding.action == "pause"

        await pilot.press("p")
        await until(pilot, lambda: trainer.sent == [("pause", {})], what="pause")

        # Grow asks first: no sends nothing, yes sends it.
        await pilot.press("g")
        await pilot.pause(0.1)
        assert "Force a grow step now?" in screen_text(app)
        await pilot.press("n")
        await pilot.pause(0.1)
        assert trainer.sent == [("pause", {})]
        await pilot.press("g", "y")
        await until(pilot, lambda: trainer.sent[-1] == ("grow", {}), what="grow")

        # eta_t: a bad value is refused in the form; a good one goes to the trainer and its answer
        # is shown; a value the trainer refuses shows its reason.
        await pilot.press("e")
        await pilot.pause(0.1)
        await pilot.press(*"abc", "enter")
        await pilot.pause(0.1)
        assert "eta must be an integer, got 'abc'" in screen_text(app)
        assert trainer.sent[-1] == ("grow", {})
        await pilot.press("backspace", "backspace", "backspace", "-", "3", "enter")
        await pilot.pause(0.1)
        assert "eta must be an integer >= 0 neurons, got '-3'" in screen_text(app)
        await pilot.press("backspace", "backspace", "1", "2", "enter")
        await until(pilot, lambda: trainer.sent[-1] == ("set", {"eta": 12}), what="set")
        await until(pilot, lambda: "accepted at step 316" in screen_text(app), what="answer")
        assert "eta_t = 12 neurons" in screen_text(app)
        await pilot.press("backspace", "backspace", *"9999", "enter")
        await until(pilot, lambda: "trainer refused" in screen_text(app), what="refusal")
        assert "trainer refused: eta must be at most 500 neurons" in screen_text(app)
        await pilot.press("escape")

        await pilot.press("c")
        await until(pilot, lambda: trainer.sent[-1] == ("checkpoint", {}), what="checkpoint")
        await pilot.press("s")
        await pilot.pause(0.1)
        assert "Stop training?" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: trainer.sent[-1] == ("stop", {}), what="stop")
        assert [c for c, _ in trainer.sent] == ["pause", "grow", "set", "set", "checkpoint", "stop"]


async def test_the_help_screen_and_the_command_palette_list_the_controls(tmp_path):
    app = MonitorApp(recorded_run(tmp_path, 20), send=StandInTrainer(), live=lambda run: True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.history.is_live, what="liveness")
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "force a grow step now" in text and "A dimmed key does nothing now" in text
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {
            "Pause training",
            "Grow now",
            "Set eta_t",
            "Checkpoint now",
            "Stop training",
        } <= set(titles)
        assert "Continue training" not in titles  # the run is not paused


def start_live_run(out: Path) -> Path:
    """A demo run started by plain `fireflytui train`, which, with no terminal, goes background."""
    started = cli(
        *["train", "--preset", "demo", "--out", str(out), "--run", "live"],
        *["--set", "train.epochs=300", "--set", "growth.rounds=1"],
        *["--set", "data.train_subset=512", "--set", "data.test_subset=128"],
        *["--set", "train.threads=1", "--set", "train.log_every=4"],
        stdin=subprocess.DEVNULL,
    )
    assert started.returncode == 0, started.stderr
    assert "no terminal to draw the monitor in" in started.stdout
    assert "fireflytui attach live --out" in started.stdout
    return out / "live"


async def test_a_live_run_is_steered_from_the_app_and_outlives_it(tmp_path):
    run = start_live_run(tmp_path)
    try:
        app = MonitorApp(run)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.history.is_live, what="the trainer")
            await until(pilot, lambda: "RUNNING" in screen_text(app), what="running")
            await pilot.press("p")
            await until(pilot, lambda: "PAUSED" in screen_text(app), what="paused")
            assert app.screen.active_bindings["p"].binding.action == "resume"

            await pilot.press("e", *"100000", "enter")
            await until(pilot, lambda: "trainer refused" in screen_text(app), what="refusal")
            assert "eta must be at most" in screen_text(app)
            await pilot.press(*["backspace"] * 6, "3", "enter")
            await until(pilot, lambda: "accepted at step" in screen_text(app), what="accepted")
            await pilot.press("escape")
            await until(pilot, lambda: "eta_t 3 (eta)" in screen_text(app), what="eta_t 3")

            rounds = len(app.history.rounds)
            await pilot.press("g", "y")
            await until(pilot, lambda: len(app.history.rounds) == rounds + 1, what="grow step")
            grow = app.history.rounds[-1]
            assert grow.trigger == "user" and grow.eta == 3 and grow.split + grow.new == 3
            await until(pilot, lambda: "user" in screen_text(app), what="the new row")
        # Quitting the app left the trainer alone.
        assert is_live(run)
        assert read_events(run)[-1]["type"] != "end"

        app = MonitorApp(run)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, app.replayed.is_set, what="the replay")
            events = read_events(run)
            assert app.history.events >= len(events) - 1  # the whole history, resumed at once
            assert [r.round for r in app.history.rounds] == [
                e["round"] for e in events if e["type"] == "grow"
            ]
            await pilot.press("3")  # the event log view
            await until(pilot, lambda: "set eta=100000: refused" in log_text(app), what="log")
            assert "PAUSED" in screen_text(app)
            await pilot.press("p")
            await until(pilot, lambda: "RUNNING" in screen_text(app), what="continued")
            await pilot.press("s", "y")
            await until(pilot, lambda: "STOPPED" in screen_text(app), timeout=60, what="stop")
            await until(pilot, lambda: not app.history.is_live, what="the trainer's exit")
            assert not app.screen.active_bindings["g"].enabled
        end = read_events(run)[-1]
        assert end["type"] == "end" and end["status"] == "stopped"
    finally:
        if is_live(run):
            cli("ctl", str(run), "stop")
        shutil.rmtree(run, ignore_errors=True)


def test_attach_without_a_terminal_says_so_in_one_line(tmp_path):
    run = recorded_run(tmp_path)
    out = cli("attach", "--out", str(tmp_path), stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: attach draws the monitor in a terminal; none is attached to this process"
    ]
    assert run.exists()
    missing = cli("attach", "nope", "--out", str(tmp_path))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


async def test_no_color_leaves_only_the_terminals_own_colours(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = MonitorApp(recorded_run(tmp_path), live=lambda run: False)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, app.replayed.is_set, what="the replay")
        await pilot.pause(0.3)
        styles = []
        for strip in app.screen._compositor.render_strips():
            segments = list(strip)
            for line_filter in app.get_line_filters():  # as on the way to the terminal
                segments = line_filter.apply(segments, app.background_colors[0])
            styles += [segment.style for segment in segments if segment.style]
        colours = {c.name for s in styles for c in (s.color, s.bgcolor) if c is not None}
        assert colours <= {"default"}, colours
        assert any(s.reverse for s in styles) and any(s.bold for s in styles)  # state, titles
        assert "FINISHED" in screen_text(app) and "▒" in screen_text(app)  # not only colour


async def test_a_trainer_killed_under_the_app_shows_the_run_failed_with_its_last_events(tmp_path):
    run = start_live_run(tmp_path)
    try:
        app = MonitorApp(run)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "RUNNING" in screen_text(app), what="running")
            os.kill(int((run / "trainer.pid").read_text()), signal.SIGKILL)
            await until(pilot, lambda: "FAILED" in screen_text(app), what="failed")
            await pilot.press("3")
            await until(pilot, lambda: "the trainer is gone" in log_text(app), what="the note")
            await pilot.pause(0.5)
            assert app.history.events == len(read_events(run))  # every event it left is shown
            assert not app.screen.active_bindings["p"].enabled
            assert "read-only" in screen_text(app)
    finally:
        if is_live(run):
            os.kill(int((run / "trainer.pid").read_text()), signal.SIGKILL)


async def test_a_deleted_run_directory_closes_the_app_with_a_clear_message(tmp_path):
    run = recorded_run(tmp_path)
    app = MonitorApp(run, live=lambda run: False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, app.replayed.is_set, what="the replay")
        shutil.rmtree(run)
        await until(pilot, lambda: app.return_code is not None, what="the app to close")
    assert app.return_code == 1
    assert app.return_value == f"the run directory {run} was deleted; the monitor has closed"
