"""The trainer as a user relies on it: events, checkpoints, exact resume, live control."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from fireflytui.checkpoint import (
    CheckpointError,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    read_metadata,
)
from fireflytui.config import Config, load_preset
from fireflytui.control import send_command
from fireflytui.data import Dataset, channel_stats, make_shapes
from fireflytui.events import read_events
from fireflytui.trainer import Trainer

# The fields DESIGN.md promises for each event type.
EVENT_FIELDS = {
    "start": {"config", "architecture", "params", "pid", "resumed_from"},
    "epoch": {
        "epoch",
        "step",
        "seconds",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "params",
        "images",
    },
    "train": {"epoch", "step", "loss", "acc", "lr", "images_per_second"},
    "grow": {
        "round",
        "epoch",
        "step",
        "method",
        "eta",
        "trigger",
        "seconds",
        "params_before",
        "params_after",
        "predicted_loss_change",
        "measured_loss_change",
        "units",
    },
    "checkpoint": {"path", "epoch", "step", "seconds", "bytes"},
    "control": {"command", "args", "ok", "error", "applied_step"},
    "state": {"state"},
    "end": {"status", "error"},
}
UNIT_FIELDS = {"name", "width_before", "width_after", "split", "new"}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    train, test = make_shapes(256, seed=1), make_shapes(96, seed=2)
    mean, std = channel_stats(train.images)
    return Dataset("shapes", train, test, mean, std, source="shapes")


def tiny(*sets: str) -> Config:
    """A run of a few seconds: 8 steps per epoch on a 4-channel VGG-11."""
    base = [
        "model.name=vgg11",
        "model.width=4",
        "data.source=shapes",
        "data.batch_size=32",
        "train.epochs=3",
        "train.lr=0.05",
        "train.threads=0",
        "train.log_every=4",
        "growth.every=1",
        "growth.rounds=2",
        "growth.ratio=0.5",
        "growth.batches=2",
        "growth.fit_steps=3",
        "checkpoint.keep=10",
    ]
    return load_preset("demo").with_overrides(base + list(sets))


def epochs_of(run_dir):
    return [e for e in read_events(run_dir) if e["type"] == "epoch"]


def test_run_leaves_every_event_type_with_its_fields(tmp_path, dataset):
    trainer = Trainer(tiny(), tmp_path, dataset=dataset, control=False)
    assert trainer.run() == "finished"
    events = read_events(tmp_path)

    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    seen = {e["type"] for e in events}
    assert seen >= {"start", "epoch", "train", "grow", "checkpoint", "state", "end"}
    for event in events:
        missing = EVENT_FIELDS[event["type"]] - set(event)
        assert not missing, f"{event['type']} event lacks {missing}"
    grows = [e for e in events if e["type"] == "grow"]
    assert [g["round"] for g in grows] == [1, 2]
    for grow in grows:
        assert grow["trigger"] == "schedule"
        assert grow["params_after"] > grow["params_before"]
        assert sum(u["width_after"] - u["width_before"] for u in grow["units"]) == grow["eta"]
        for unit in grow["units"]:
            assert UNIT_FIELDS <= set(unit)
            assert unit["width_after"] == unit["width_before"] + len(unit["split"]) + unit["new"]
    assert events[-1]["type"] == "end" and events[-1]["status"] == "finished"
    assert [e["epoch"] for e in epochs_of(tmp_path)] == [1, 2, 3]

    # One checkpoint per epoch and per grow step, each named in a checkpoint event.
    files = {p.name for p in find_checkpoints(tmp_path)}
    logged = {e["path"].rsplit("/", 1)[-1] for e in events if e["type"] == "checkpoint"}
    assert files == logged
    assert sum(name.endswith("-epoch.safetensors") for name in files) == 3
    assert sum(name.endswith("-grow.safetensors") for name in files) == 2


def test_checkpoint_round_trip(tmp_path, dataset):
    trainer = Trainer(tiny("train.epochs=1", "growth.rounds=0"), tmp_path, dataset=dataset)
    trainer.control = None
    trainer.run()
    path = latest_checkpoint(tmp_path)
    checkpoint = load_checkpoint(path)

    weights = trainer.model.state_dict()
    assert set(checkpoint.group("model")) == set(weights)
    for name, value in weights.items():
        assert torch.equal(checkpoint.group("model")[name], value), name
    params = dict(trainer.model.named_parameters())
    buffers = checkpoint.group("optimizer")
    assert len(buffers) == len(params)
    for name, p in params.items():
        carried = trainer.optimizer.state[p]["momentum_buffer"]
        assert torch.equal(buffers[f"{name}.momentum_buffer"], carried)
    assert torch.equal(checkpoint.tensors["rng.torch"], torch.get_rng_state())
    assert torch.equal(
        checkpoint.tensors["rng.data"], trainer.train_batches.state_dict()["generator"]
    )
    meta = checkpoint.meta
    assert meta["progress"]["epoch"] == 1 and meta["progress"]["step"] == 8
    assert meta["architecture"] == trainer.model.arch.to_dict()
    assert Config.from_dict(meta["config"]) == trainer.effective_config()
    assert meta["settings"] == trainer.settings.to_dict()
    assert read_metadata(path)["progress"] == meta["progress"]

    model = load_model(path)
    assert not model.training
    x = dataset.test.images[:8].float() / 255
    trainer.model.eval()
    assert torch.equal(model(x), trainer.model(x))


def test_resume_after_epoch_matches_uninterrupted_run(tmp_path, dataset):
    full = tmp_path / "full"
    full.mkdir()
    assert Trainer(tiny(), full, dataset=dataset, control=False).run() == "finished"
    after_epoch_1 = [p for p in find_checkpoints(full) if p.name.endswith("-epoch.safetensors")][0]
    assert read_metadata(after_epoch_1)["progress"]["epoch"] == 1

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    checkpoint = load_checkpoint(after_epoch_1)
    config = Config.from_dict(checkpoint.meta["config"])
    trainer = Trainer(config, resumed, resume=checkpoint, dataset=dataset, control=False)
    assert trainer.run() == "finished"

    expected, got = epochs_of(full)[1:], epochs_of(resumed)
    assert [e["epoch"] for e in got] == [2, 3]
    for a, b in zip(expected, got, strict=True):
        for key in ("train_loss", "test_loss", "train_acc", "test_acc", "params", "step"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
    grows = [[e for e in read_events(d) if e["type"] == "grow"] for d in (full, resumed)]
    # The resumed run repeats the grow step scheduled after epoch 1 and the one after epoch 2.
    assert [g["units"] for g in grows[0]] == [g["units"] for g in grows[1]]


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, dataset):
    full = tmp_path / "full"
    full.mkdir()
    trainer = Trainer(tiny(), full, dataset=dataset, control=False)

    def save_at_step_12(event):
        if event["type"] == "train" and event["step"] == 12:
            trainer.save("user")

    trainer.on_event = save_at_step_12
    trainer.run()
    user = [p for p in find_checkpoints(full) if p.name.endswith("-user.safetensors")]
    assert len(user) == 1 and read_metadata(user[0])["progress"]["epoch_step"] == 4

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    checkpoint = load_checkpoint(user[0])
    config = Config.from_dict(checkpoint.meta["config"])
    Trainer(config, resumed, resume=checkpoint, dataset=dataset, control=False).run()
    for a, b in zip(epochs_of(full)[1:], epochs_of(resumed), strict=True):
        assert b["epoch"] == a["epoch"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
        assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-6)


def test_epoch_checkpoints_are_pruned_to_keep(tmp_path, dataset):
    config = tiny("train.epochs=4", "growth.rounds=1", "checkpoint.keep=2")
    Trainer(config, tmp_path, dataset=dataset, control=False).run()
    names = [p.name for p in find_checkpoints(tmp_path)]
    assert [n for n in names if n.endswith("-epoch.safetensors")] == [
        "step-0000024-epoch.safetensors",
        "step-0000032-epoch.safetensors",
    ]
    assert sum(n.endswith("-grow.safetensors") for n in names) == 1


def test_learning_rate_restarts_after_each_grow_step(tmp_path, dataset):
    config = tiny("train.epochs=4", "growth.every=2", "growth.rounds=1", "train.log_every=1")
    Trainer(config, tmp_path, dataset=dataset, control=False).run()
    lrs = {e["step"]: e["lr"] for e in read_events(tmp_path) if e["type"] == "train"}
    # The first cycle spans epochs 1-2 (steps 1-16), the second epochs 3-4 (steps 17-32).
    assert lrs[1] > lrs[8] > lrs[16]
    assert lrs[17] > lrs[16] and lrs[17] == pytest.approx(lrs[1], rel=0.05)
    assert lrs[32] < 0.01 * lrs[17]


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, dataset):
    trainer = Trainer(tiny("growth.rounds=0"), tmp_path, dataset=dataset, control=False)
    original = trainer._train_step

    def poisoned(x, y):
        if trainer.progress.epoch == 1:
            x = x * float("nan")
        original(x, y)

    trainer._train_step = poisoned
    assert trainer.run() == "failed"
    end = read_events(tmp_path)[-1]
    assert end["status"] == "failed" and "nan" in end["error"]
    last = latest_checkpoint(tmp_path)
    assert read_metadata(last)["progress"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load_checkpoint(last).group("model").values())


class LiveRun:
    """A trainer running in a thread, steered through its real control socket."""

    def __init__(self, run_dir, dataset, *sets):
        self.run_dir = run_dir
        self.trainer = Trainer(tiny("train.epochs=200", *sets), run_dir, dataset=dataset)
        self.status = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (run_dir / "control.sock").exists():
            assert time.monotonic() < deadline, "the trainer did not open its control socket"
            time.sleep(0.02)

    def _run(self):
        self.status = self.trainer.run()

    def send(self, command, **args):
        return send_command(self.run_dir, command, args, timeout=60)


def test_every_control_command_takes_effect_and_is_acknowledged(tmp_path, dataset):
    live = LiveRun(tmp_path, dataset, "growth.rounds=0")

    reply = live.send("pause")
    assert reply["ok"] and reply["state"] == "paused"
    paused_at = live.send("status")["step"]
    time.sleep(0.3)
    assert live.send("status")["step"] == paused_at  # no step is taken while paused

    reply = live.send("set", eta="abc")
    assert not reply["ok"] and "eta must be an integer" in reply["error"]
    reply = live.send("set", eta=-3)
    assert not reply["ok"] and ">= 0" in reply["error"]
    reply = live.send("set", eta="3", lr="0.02")
    assert reply["ok"] and reply["settings"]["eta"] == 3 and reply["settings"]["lr"] == 0.02

    reply = live.send("grow")
    assert reply["ok"] and reply["round"] == 1
    reply = live.send("checkpoint")
    assert reply["ok"] and (tmp_path / reply["path"].rsplit("/", 1)[-1]).exists()
    assert not live.send("launch")["ok"]

    reply = live.send("continue")
    assert reply["ok"] and reply["state"] == "running"
    time.sleep(0.3)
    assert live.send("status")["step"] > paused_at

    reply = live.send("stop")
    assert reply["ok"]
    live.thread.join(30)
    assert live.status == "stopped"

    events = read_events(tmp_path)
    controls = [(e["command"], e["ok"]) for e in events if e["type"] == "control"]
    assert controls == [
        ("pause", True),
        ("status", True),
        ("status", True),
        ("set", False),
        ("set", False),
        ("set", True),
        ("grow", True),
        ("checkpoint", True),
        ("launch", False),
        ("continue", True),
        ("status", True),
        ("stop", True),
    ]
    grow = next(e for e in events if e["type"] == "grow")
    assert grow["trigger"] == "user" and grow["eta"] == 3
    states = [e["state"] for e in events if e["type"] == "state"]
    assert states == ["running", "paused", "growing", "paused", "running", "stopped"]
    assert events[-1] == {**events[-1], "type": "end", "status": "stopped", "error": None}
    # The stop left a checkpoint at the step it was applied.
    stop = [e for e in events if e["type"] == "control" and e["command"] == "stop"][0]
    assert latest_checkpoint(tmp_path).name == f"step-{stop['applied_step']:07d}-user.safetensors"


def test_new_settings_are_saved_and_resumed(tmp_path, dataset):
    live = LiveRun(tmp_path, dataset, "growth.rounds=0")
    assert live.send("set", ratio="0.25", every="3")["ok"]
    assert live.send("stop")["ok"]
    live.thread.join(30)
    meta = read_metadata(latest_checkpoint(tmp_path))
    assert meta["settings"]["ratio"] == 0.25 and meta["settings"]["every"] == 3
    config = Config.from_dict(meta["config"])
    assert config.growth.ratio == 0.25 and config.growth.every == 3


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    truncated = tmp_path / "step-0000001-epoch.safetensors"
    save_file({"x": torch.zeros(100)}, str(truncated), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not a fireflytui checkpoint"):
        read_metadata(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    pickled = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, pickled)  # a pickle archive under a safetensors name
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(pickled)
    newer = tmp_path / "newer.safetensors"
    meta = {"format": "fireflytui.checkpoint", "format_version": "99"}
    meta |= {k: json.dumps({}) for k in ("architecture", "config", "progress")}
    save_file({"x": torch.zeros(1)}, str(newer), metadata=meta)
    with pytest.raises(CheckpointError, match="newer fireflytui"):
        load_checkpoint(newer)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_channels_last_layout_trains_the_same_network(tmp_path, dataset):
    losses = {}
    for flag in ("true", "false"):
        run_dir = tmp_path / flag
        run_dir.mkdir()
        config = tiny("train.epochs=1", "growth.rounds=0", f"train.channels_last={flag}")
        trainer = Trainer(config, run_dir, dataset=dataset, control=False)
        conv = trainer.model.layers[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == (flag == "true")
        assert trainer.run() == "finished"
        losses[flag] = epochs_of(run_dir)[0]
    for key in ("train_loss", "test_loss"):
        assert losses["true"][key] == pytest.approx(losses["false"][key], rel=1e-3), key


def test_a_failing_grow_step_leaves_the_network_as_it_was_and_says_so(
    tmp_path, dataset, monkeypatch
):
    trainer = Trainer(tiny("growth.rounds=1"), tmp_path, dataset=dataset, control=False)
    before = {}

    def broken_grow_step(model, *args, **kwargs):
        before["model"] = model
        before["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        raise IndexError("boom")  # not an error the engine raises on purpose

    monkeypatch.setattr("fireflytui.trainer.grow_step", broken_grow_step)
    original, checked = trainer._train_step, []

    def first_step_after(x, y):
        if "model" in before and not checked:  # the network the failed step was given, as it was
            assert trainer.model is before["model"]
            state = trainer.model.state_dict()
            assert all(torch.equal(state[k], v) for k, v in before["state"].items())
            checked.append(True)
        original(x, y)

    trainer._train_step = first_step_after
    assert trainer.run() == "finished"
    assert checked
    grow = next(e for e in read_events(tmp_path) if e["type"] == "grow")
    assert grow["error"] == "the grow step failed and the network is unchanged: IndexError: boom"
    assert grow["params_after"] == grow["params_before"] and grow["units"] == []
    assert epochs_of(tmp_path)[-1]["widths"] == [4] * 8


class FullDisk:
    """Makes the chosen checkpoint writes fail half way, as a full disk does."""

    def __init__(self, monkeypatch, fail=lambda call: True):
        import fireflytui.checkpoint as checkpoint

        self.calls, self.fail, self.write = 0, fail, checkpoint._write_durably
        monkeypatch.setattr(checkpoint, "_write_durably", self)

    def __call__(self, path, data):
        self.calls += 1
        if not self.fail(self.calls):
            return self.write(path, data)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")


def test_a_full_disk_keeps_the_last_good_checkpoint_and_training_goes_on(
    tmp_path, dataset, monkeypatch
):
    disk = FullDisk(monkeypatch, fail=lambda call: call == 2)  # the second epoch's checkpoint
    trainer = Trainer(tiny("growth.rounds=0"), tmp_path, dataset=dataset, control=False)
    assert trainer.run() == "finished"
    saves = [e for e in read_events(tmp_path) if e["type"] == "checkpoint"]
    assert [e["error"] is None for e in saves] == [True, False, True]
    failed = saves[1]
    assert failed["path"] is None and failed["bytes"] == 0
    assert "No space left on device" in failed["error"]
    assert "the last good checkpoint, step-0000008-epoch.safetensors, is kept" in failed["error"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert read_metadata(tmp_path / "step-0000008-epoch.safetensors")["progress"]["epoch"] == 1
    assert read_metadata(latest_checkpoint(tmp_path))["progress"]["epoch"] == 3
    assert disk.calls == 3


def test_with_a_full_disk_checkpoint_and_stop_commands_are_refused_and_training_goes_on(
    tmp_path, dataset, monkeypatch
):
    disk = FullDisk(monkeypatch)
    live = LiveRun(tmp_path, dataset, "growth.rounds=0", "checkpoint.keep=1")
    try:
        reply = live.send("checkpoint")
        assert not reply["ok"] and "No space left on device" in reply["error"]
        reply = live.send("stop")
        assert not reply["ok"] and reply["error"].endswith(
            "not stopping: free space and stop again"
        )
        step = live.send("status")["step"]
        deadline = time.monotonic() + 30
        while live.send("status")["step"] <= step:  # still training
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        disk.fail = lambda call: False  # space is freed
        reply = live.send("stop")
        live.thread.join(60)
    assert reply["ok"] and live.status == "stopped"
    assert read_events(tmp_path)[-1]["error"] is None
    assert read_metadata(latest_checkpoint(tmp_path))["kind"] == "user"


def test_resuming_an_older_checkpoint_in_its_own_run_makes_its_saves_the_latest(tmp_path, dataset):
    run = tmp_path / "run"
    run.mkdir()
    assert (
        Trainer(tiny("checkpoint.keep=2"), run, dataset=dataset, control=False).run() == "finished"
    )
    older = run / "step-0000008-grow.safetensors"  # after epoch 1's grow step
    checkpoint = load_checkpoint(older)
    config = Config.from_dict(checkpoint.meta["config"]).with_overrides(["growth.ratio=0.25"])
    trainer = Trainer(config, run, resume=checkpoint, dataset=dataset, control=False)
    original = trainer._train_step

    def crash_in_epoch_3(x, y):  # the resumed branch dies before it reaches the old end
        if trainer.progress.epoch == 2 and trainer.progress.epoch_step == 3:
            raise KeyboardInterrupt
        original(x, y)

    trainer._train_step = crash_in_epoch_3
    trainer.run()
    latest = latest_checkpoint(run)  # what `--resume RUN` picks
    assert read_metadata(latest)["settings"]["ratio"] == 0.25
    assert read_metadata(latest)["progress"]["epoch"] == 2
    # The epoch checkpoints kept are the newest written, not those of the highest step.
    kept = [p for p in find_checkpoints(run) if p.name.endswith("-epoch.safetensors")]
    assert [read_metadata(p)["settings"]["ratio"] for p in kept].count(0.25) >= 1
    assert (run / "step-0000016-epoch.safetensors").exists()
