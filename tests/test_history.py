"""What the monitor knows of a run, folded from its events: bounded, exact where it matters."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fireflytui.events import read_events
from fireflytui.history import RunHistory, Series, UnitGrowth

RECORDED = Path(__file__).parent / "data" / "demo-run.jsonl"


def test_a_series_stays_bounded_and_keeps_the_last_and_best_values_exact():
    series = Series(capacity=64, better="min")
    values = [random.Random(0).random() + 1 for _ in range(100_000)]
    values[70_000] = 0.25
    for v in values:
        series.add(v)
    points = series.points()
    assert len(points) <= 64
    assert series.last == values[-1] and series.best == 0.25 and series.count == 100_000
    # Every full point averages `span` consecutive values, oldest first.
    span = series.span
    for i, point in enumerate(series.values):
        chunk = values[i * span : (i + 1) * span]
        assert point == pytest.approx(sum(chunk) / len(chunk))


def test_downsampling_keeps_the_shape_of_a_curve():
    series = Series(capacity=32, better="max")
    for i in range(10_000):
        series.add(float(i))
    points = series.points()
    assert points == sorted(points) and len(points) <= 32
    assert points[0] < 1000 and points[-1] > 9000 and series.best == 9999.0


def test_a_strip_marks_split_neurons_and_appends_their_copies_then_new_ones():
    unit = UnitGrowth("conv1", width_before=5, width_after=9, split=(1, 3), new=2)
    assert unit.strip() == "·◆·◆·◇◇++"
    assert len(unit.strip()) == unit.width_after


def test_a_recorded_run_folds_into_its_widths_rounds_settings_and_metrics():
    events = read_events(RECORDED)
    history = RunHistory.from_events(events, name="demo-recorded")
    grows = [e for e in events if e["type"] == "grow"]
    epochs = [e for e in events if e["type"] == "epoch"]
    start, end = events[0], events[-1]

    assert history.state == "finished" and history.epoch == history.epochs == 8
    assert history.start_widths == [u["width"] for u in start["architecture"]["units"]]
    assert history.widths == [u["width_after"] for u in grows[-1]["units"]] == epochs[-1]["widths"]
    assert history.params == epochs[-1]["params"]
    assert [r.round for r in history.rounds] == [g["round"] for g in grows]
    assert [r.trigger for r in history.rounds].count("user") == 1
    assert history.rounds[0].units[2].split == tuple(grows[0]["units"][2]["split"])
    assert history.settings["eta"] == 12  # the accepted `set`; the refused one changed nothing
    assert history.eta_t() == (12, "eta")
    assert history.train_loss.points() == [e["loss"] for e in events if e["type"] == "train"]
    assert history.test_acc.points() == [e["test_acc"] for e in epochs]
    assert history.test_acc.best == max(e["test_acc"] for e in epochs)
    assert history.elapsed() == pytest.approx(end["time"] - start["time"])
    texts = [line.text for line in history.log]
    assert "set eta=abc: refused: eta must be an integer, got 'abc'" in texts
    assert any(t.startswith("grow step 4 (user): +12 neurons") for t in texts)
    assert texts[-1] == "finished"


def test_a_trainer_gone_without_an_end_event_shows_as_failed():
    events = [e for e in read_events(RECORDED) if e["type"] != "end"][:20]
    history = RunHistory.from_events(events)
    assert history.shown_state == "running" and not history.is_live  # liveness not known yet
    history.live = True
    assert history.shown_state == "running" and history.is_live
    history.live = False
    assert history.shown_state == "failed" and not history.is_live


def start_event(seq, time, step=0, resumed=None, width=8):
    return {
        "seq": seq,
        "time": time,
        "type": "start",
        "architecture": {"name": "mlp", "units": [{"name": "fc1", "width": width}]},
        "params": 100,
        "device": "cpu",
        "epochs": 10,
        "steps_per_epoch": 100,
        "settings": {"eta": 0, "ratio": 0.5, "every": 1, "lr": 0.1},
        "progress": {"epoch": step // 100, "step": step},
        "resumed_from": resumed,
    }


def test_elapsed_and_remaining_leave_out_pauses_and_the_gap_before_a_resume():
    history = RunHistory()
    for event in [
        start_event(1, 1000.0),
        {"seq": 2, "time": 1010.0, "type": "train", "step": 100, "loss": 1.0},
        {"seq": 3, "time": 1010.0, "type": "state", "state": "paused"},
        {"seq": 4, "time": 1040.0, "type": "state", "state": "running"},
        {"seq": 5, "time": 1050.0, "type": "train", "step": 200, "loss": 0.9},
    ]:
        history.apply(event)
    assert history.remaining() == pytest.approx(800 * 20 / 200)  # 20 s of training per 200 steps

    # Killed at 1050 s, resumed an hour later from step 200 with a wider network.
    history.apply(start_event(6, 4650.0, step=200, resumed="/x/step-0000200-epoch.safetensors"))
    history.apply({"seq": 7, "time": 4660.0, "type": "train", "step": 300, "loss": 0.8})
    assert history.elapsed() == pytest.approx(50 + 10)
    assert history.remaining() == pytest.approx(700 * 10 / 100)
    assert history.start_widths == [8]
    assert history.log[-1].text.startswith("resumed from step-0000200-epoch.safetensors")


def test_an_event_with_odd_fields_is_noted_not_fatal():
    history = RunHistory()
    history.apply(start_event(1, 0.0))
    history.apply({"seq": 2, "time": 1.0, "type": "grow", "units": [{"name": "fc1"}]})
    history.apply({"seq": 3, "time": 2.0, "type": "epoch", "epoch": 1, "test_acc": 0.5})
    assert (
        history.log[-1].kind == "error" and "unreadable grow event (seq 2)" in history.log[-1].text
    )
    assert history.epoch == 1 and history.test_acc.last == 0.5 and history.events == 3
