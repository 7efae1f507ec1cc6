"""The command line as a user meets it: headless and detached runs, resume, ctl, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from runs import cli
from typer.testing import CliRunner

from fireflytui.checkpoint import find_checkpoints, latest_checkpoint, read_metadata
from fireflytui.cli import app
from fireflytui.events import read_events
from fireflytui.rundir import TrainerLock, is_live

TINY = [
    "model.width=4",
    "model.name=vgg11",
    "data.train_subset=256",
    "data.test_subset=96",
    "data.batch_size=32",
    "train.epochs=1",
    "growth.rounds=1",
    "growth.batches=2",
    "growth.fit_steps=3",
]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, *needles: str) -> None:
    """A user's mistake: exit code 2, one `error:` line naming it, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = invoke(
        "train", "--preset", "demo", "--headless", "--out", str(out), "--run", "r1", *sets(*TINY)
    )
    assert result.exit_code == 0, result.output
    return out / "r1"


def test_headless_run_prints_a_table_and_leaves_its_files(finished_run):
    files = {p.name for p in finished_run.iterdir()}
    assert {"run.toml", "events.jsonl", "trainer.lock"} <= files
    assert "trainer.pid" not in files and "control.sock" not in files  # gone when it ended
    assert oct(finished_run.stat().st_mode & 0o777) == "0o700"
    assert read_events(finished_run)[-1]["status"] == "finished"
    assert len(find_checkpoints(finished_run)) == 1  # epoch 1; no grow after the last epoch


def test_resume_prints_what_comes_from_where_and_continues(finished_run):
    out = finished_run.parent
    result = invoke(
        "train",
        "--resume",
        "r1",  # a run name under --out
        "--headless",
        "--run",
        "r2",
        "--out",
        str(out),
        *sets("train.epochs=2"),
    )
    assert result.exit_code == 0, result.output
    assert "from the checkpoint: the vgg11 network" in result.output
    assert "from the command line: train.epochs = 2 (checkpoint: 1)" in result.output
    lines = result.output.splitlines()
    grow = [line for line in lines if line.lstrip().startswith("grow")]
    epochs = [line for line in lines if line.split()[:1] == ["2"]]
    assert len(grow) == 1 and len(epochs) == 1  # the grow after epoch 1, then epoch 2
    start = read_events(out / "r2")[0]
    assert start["type"] == "start" and start["resumed_from"].endswith("-epoch.safetensors")


def test_user_mistakes_get_one_line_and_leave_nothing(tmp_path):
    out = str(tmp_path / "out")
    one_line_error(invoke("train", "--preset", "vgg", "--out", out), "unknown preset", "demo")
    one_line_error(
        invoke("train", "--preset", "demo", "--out", out, *sets("train.lrr=1")),
        "did you mean 'train.lr'",
    )
    one_line_error(
        invoke("train", "--preset", "demo", "--out", out, *sets("train.epochs=0")),
        "train.epochs",
    )
    one_line_error(
        invoke("train", "--preset", "demo", "--out", out, *sets("growth.ratio=1.5")),
        "growth.ratio",
    )
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[train]\nepochs = \n")
    one_line_error(invoke("train", "--preset", str(bad_toml), "--out", out), "line 2")
    one_line_error(invoke("train", "--resume", str(tmp_path / "nope"), "--out", out), "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(
        invoke(
            "train",
            "--preset",
            "demo",
            "--headless",
            "--out",
            out,
            *sets("data.source=cifar10", f"data.dir={empty}"),
        ),
        "cifar10 is not in",
        "data.dir",
    )
    leftovers = list(Path(out).iterdir()) if Path(out).exists() else []
    assert leftovers == []  # the failed start removed the run directory it had made


def test_resume_refuses_damage_and_contradictions(finished_run, tmp_path):
    out = str(tmp_path)
    one_line_error(
        invoke("train", "--resume", str(finished_run), "--out", out, *sets("model.width=32")),
        "model.width",
        "contradicts the checkpoint",
    )
    one_line_error(
        invoke("train", "--resume", str(finished_run), "--preset", "demo", "--out", out),
        "drop --preset",
    )
    corrupt = tmp_path / "step-0000008-epoch.safetensors"
    corrupt.write_bytes(latest_checkpoint(finished_run).read_bytes()[:100])
    one_line_error(invoke("train", "--resume", str(corrupt), "--out", out), "truncated or corrupt")
    with TrainerLock(finished_run):
        one_line_error(
            invoke("train", "--resume", str(finished_run), "--headless", "--out", out),
            "in use by a live trainer",
        )


def test_presets_inspect_runs(finished_run):
    listed = invoke("presets").output.split()
    assert {"demo", "vgg19-cifar10", "mobilenetv1-cifar100", "mlp-mnist"} <= set(listed)
    shown = invoke("presets", "vgg19-cifar10").output
    assert "growth.ratio" in shown and "0.35" in shown and "train.lr" in shown
    assert invoke("presets", "nope").exit_code == 2

    text = invoke("inspect", str(finished_run)).output
    assert "vgg11" in text and "widths       4, 4, 4, 4, 4, 4, 4, 4" in text
    meta = json.loads(invoke("inspect", str(finished_run), "--json").output)
    assert meta["progress"]["epoch"] == 1 and meta["architecture"]["name"] == "vgg11"

    table = invoke("runs", "--out", str(finished_run.parent)).output
    row = [line for line in table.splitlines() if line.startswith("r1 ")][0]
    assert "finished" in row and "1/1" in row
    one_line_error(invoke("ctl", str(finished_run), "pause"), "no trainer is running")


def test_detached_run_outlives_its_cli_and_obeys_ctl(tmp_path):
    out = str(tmp_path)
    started = cli(
        "train",
        "--preset",
        "demo",
        "--detach",
        "--out",
        out,
        "--run",
        "bg",
        *sets(*TINY, "train.epochs=500", "growth.rounds=0", "train.threads=1"),
    )
    assert started.returncode == 0, started.stderr
    assert "training in the background" in started.stdout
    run = tmp_path / "bg"
    assert is_live(run)  # the CLI has exited; the trainer lives on in its own session

    paused = cli("ctl", str(run), "pause")
    assert paused.returncode == 0 and "state=paused" in paused.stdout
    refused = cli("ctl", str(run), "set", "eta=abc")
    assert refused.returncode == 1 and "refused: eta must be an integer" in refused.stderr
    changed = cli("ctl", "bg", "set", "eta=3", "--out", out)
    assert changed.returncode == 0 and "settings=eta=3," in changed.stdout
    assert cli("ctl", str(run), "continue").returncode == 0
    stopped = cli("ctl", str(run), "stop")
    assert stopped.returncode == 0, stopped.stderr

    deadline = time.monotonic() + 30
    while is_live(run):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    events = read_events(run)
    assert events[-1]["type"] == "end" and events[-1]["status"] == "stopped"
    commands = [(e["command"], e["ok"]) for e in events if e["type"] == "control"]
    assert commands == [
        ("pause", True),
        ("set", False),
        ("set", True),
        ("continue", True),
        ("stop", True),
    ]
    assert read_metadata(latest_checkpoint(run))["settings"]["eta"] == 3
    assert "epoch" in (run / "trainer.log").read_text()  # the trainer's table went to its log


def tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `root` with its size, modification time and contents."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_bad_input_changes_nothing_on_disk(finished_run, tmp_path):
    """Every refusal is one `error:` line and exit code 2, and leaves every file as it was."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = finished_run.parent
    run = str(finished_run)
    checkpoint = latest_checkpoint(finished_run)
    newer = tmp_path / "newer" / "step-0000001-epoch.safetensors"
    newer.parent.mkdir()
    with safe_open(str(checkpoint), framework="pt") as f:
        meta = {**f.metadata(), "format_version": "99"}
    save_file(load_file(checkpoint), newer, metadata=meta)
    pickled = tmp_path / "pickled" / "step-0000001-epoch.safetensors"
    pickled.parent.mkdir()
    pickled.write_bytes(b"\x80\x04\x95" + bytes(64))  # a pickle stream, as torch.save writes
    truncated = tmp_path / "truncated" / "step-0000001-epoch.safetensors"
    truncated.parent.mkdir()
    truncated.write_bytes(checkpoint.read_bytes()[:-100])
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[train]\nepochs = 3\nlr = = 0.1\nseed = 1\n")
    missing_data = sets("data.source=imagefolder", f"data.dir={tmp_path / 'no-such-dir'}")

    cases = [
        (["--preset", "vgg"], "unknown preset", "demo"),
        (["--preset", str(bad_toml)], "line 3", "column"),
        (["--preset", "demo", *sets("growth.rtio=0.3")], "did you mean 'growth.ratio'"),
        (["--preset", "demo", *sets("growth.eta=-3")], "growth.eta"),
        (["--preset", "demo", *sets("train.epochs=0")], "train.epochs"),
        (["--preset", "demo", *sets("growth.ratio=0")], "growth.ratio"),
        (["--preset", "demo", *sets("train.epochs=ten")], "train.epochs"),
        (["--preset", "demo", "--run", "r1"], "already exists"),
        (["--resume", str(tmp_path / "nope.safetensors")], "nope"),
        (["--resume", str(truncated)], "truncated or corrupt"),
        (["--resume", str(pickled)], str(pickled.name)),
        (["--resume", str(newer)], "newer"),
        (["--resume", run, *sets("model.width=32")], "contradicts the checkpoint"),
        (["--resume", run, "--headless", *missing_data], "no-such-dir"),
        (["--resume", run, "--detach", *missing_data], "no-such-dir"),
    ]
    before = tree(out)
    for args, *needles in cases:
        one_line_error(invoke("train", "--out", str(out), *args), *needles)
        assert tree(out) == before, args
    with TrainerLock(finished_run):  # a live trainer holds the run
        one_line_error(invoke("train", "--out", str(out), "--resume", run), "in use by a live")
    assert tree(out) == before
    assert [e["status"] for e in read_events(finished_run) if e["type"] == "end"] == ["finished"]
