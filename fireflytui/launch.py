"""Starting a run: resolve its config, prepare its directory, train here or in the background.

`python -m fireflytui.launch RUN_DIR [--resume CKPT]` is the background trainer that
`fireflytui train --detach` spawns in its own session, so it outlives the terminal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fireflytui.checkpoint import CheckpointError, read_metadata, resolve_checkpoint
from fireflytui.config import Config, ConfigError, diff, load_preset
from fireflytui.events import EVENTS_NAME, EventReader, read_events
from fireflytui.rundir import (
    CONFIG_NAME,
    LOG_NAME,
    RunError,
    TrainerLock,
    create_run_dir,
    is_live,
    is_run_dir,
    new_run_name,
    write_text_atomic,
)

# A resumed run's new config, until its trainer has started.
NEXT_CONFIG_NAME = ".run.toml.next"

# Keys a resumed run cannot change: the checkpoint fixes its network.
FIXED_ON_RESUME = ("model.",)


class LaunchError(Exception):
    """A run that cannot start, with a one-line message for the user."""


@dataclass
class Launch:
    """A run ready to start: its resolved config and directory, and where it resumes from."""

    config: Config
    run_dir: Path
    resume: Path | None = None
    notes: list[str] = field(default_factory=list)  # what came from where, for the user
    created: bool = False  # the run directory is new (and is removed if the run never starts)
    # What an existing run directory held before this launch, to put back if it never starts.
    starts: int = 0  # `start` events in its log
    log_state: tuple[int, int, int] | None = None  # trainer.log's size, atime and mtime (ns)

    def discard_if_unstarted(self) -> bool:
        """Undoes a launch whose trainer failed before `start`: the disk is as it was."""
        if is_live(self.run_dir):
            return False
        events = read_events(self.run_dir / EVENTS_NAME)
        if sum(e["type"] == "start" for e in events) > self.starts:
            return False
        if self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return True
        (self.run_dir / NEXT_CONFIG_NAME).unlink(missing_ok=True)
        log = self.run_dir / LOG_NAME
        if self.log_state is None:
            log.unlink(missing_ok=True)
        elif log.exists():
            size, atime, mtime = self.log_state
            os.truncate(log, size)
            os.utime(log, ns=(atime, mtime))
        return True


def resolve_config(
    preset: str | None, sets: list[str], resume: str | None, out: str | Path = "checkpoints"
) -> tuple[Config, Path | None, list[str]]:
    """The run's config: a preset with overrides, or a checkpoint's config with overrides."""
    if resume is None:
        if preset is None:
            raise LaunchError("train needs --preset NAME or FILE.toml (see `fireflytui presets`)")
        return load_preset(preset).with_overrides(sets), None, []
    if preset is not None:
        raise LaunchError(
            "--resume takes the config from the checkpoint: drop --preset, change keys with --set"
        )
    named = Path(out).expanduser() / resume  # a run name under --out
    path = resolve_checkpoint(named if not Path(resume).exists() and is_run_dir(named) else resume)
    meta = read_metadata(path)
    base = Config.from_dict(meta["config"], source=str(path))
    config = base.with_overrides(sets)
    changed = diff(base, config)
    for key, (before, _) in changed.items():
        if key.startswith(FIXED_ON_RESUME):
            raise LaunchError(
                f"--set {key} contradicts the checkpoint, whose network has {key}={before!r}: "
                "a resumed run keeps its architecture; drop that --set"
            )
    progress, arch = meta["progress"], meta["architecture"]
    notes = [
        f"resuming from {path}: epoch {progress.get('epoch', 0)}, step "
        f"{progress.get('step', 0)}, {progress.get('round', 0)} grow steps, "
        f"{meta.get('params', 0):,} params",
        f"from the checkpoint: the {arch['name']} network (widths "
        f"{','.join(map(str, arch['widths']))}), weights, momentum, RNG states, batch position, "
        "counters, and every setting not listed below (live settings: "
        + ", ".join(f"{k}={v}" for k, v in (meta.get("settings") or {}).items())
        + ")",
    ]
    if changed:
        notes += [
            f"from the command line: {k} = {b!r} (checkpoint: {a!r})"
            for k, (a, b) in changed.items()
        ]
    else:
        notes.append("from the command line: nothing")
    return config, path, notes


def prepare(
    preset: str | None,
    sets: list[str],
    *,
    run: str | None = None,
    out: str | Path = "checkpoints",
    resume: str | None = None,
) -> Launch:
    """Checks everything a run needs before it starts, and makes or reuses its directory."""
    config, checkpoint, notes = resolve_config(preset, sets, resume, out)
    if checkpoint is not None and run is None and is_run_dir(checkpoint.parent):
        run_dir = checkpoint.parent  # a resumed run continues its own directory and log
        if is_live(run_dir):
            raise RunError(
                f"run {run_dir} is in use by a live trainer: stop it first "
                f"(`fireflytui ctl {run_dir} stop`) or resume into a new run with --run NAME"
            )
        log = run_dir / LOG_NAME
        stat = log.stat() if log.exists() else None
        launch = Launch(
            config,
            run_dir,
            checkpoint,
            notes,
            starts=sum(e["type"] == "start" for e in read_events(run_dir / EVENTS_NAME)),
            log_state=(stat.st_size, stat.st_atime_ns, stat.st_mtime_ns) if stat else None,
        )
        # The trainer puts it in place of run.toml once it has started; until then, nothing of
        # the run is changed.
        write_text_atomic(run_dir / NEXT_CONFIG_NAME, config.to_toml())
        return launch
    prefix = Path(preset).stem if preset else (checkpoint.parent.name if checkpoint else "run")
    run_dir = create_run_dir(out, run or new_run_name(prefix))
    write_text_atomic(run_dir / CONFIG_NAME, config.to_toml())
    return Launch(config, run_dir, checkpoint, notes, created=True)


def train_here(run_dir: str | Path, resume: str | Path | None, stream: TextIO) -> int:
    """Runs the trainer in this process, printing the headless table; returns an exit code."""
    from fireflytui.checkpoint import load_checkpoint
    from fireflytui.data import DataError
    from fireflytui.trainer import Trainer, TrainingError

    run_dir = Path(run_dir)
    lock = TrainerLock(run_dir).acquire()
    try:
        from fireflytui.table import TablePrinter

        pending = run_dir / NEXT_CONFIG_NAME
        try:
            config = load_preset(str(pending if pending.exists() else run_dir / CONFIG_NAME))
            checkpoint = load_checkpoint(resume) if resume else None
            trainer = Trainer(config, run_dir, resume=checkpoint, on_event=TablePrinter(stream))
        except (DataError, TrainingError, CheckpointError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)  # the run never started: no event
            return 2
        if pending.exists():
            os.replace(pending, run_dir / CONFIG_NAME)
        _stop_on_signals(trainer)
        status = trainer.run()
        return 0 if status in ("finished", "stopped") else 1
    finally:
        lock.release()


def _stop_on_signals(trainer) -> None:
    """SIGINT/SIGTERM stop at the next step boundary with a checkpoint; a second one aborts."""

    def handler(signum, frame):
        if trainer.stopping:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        print("stopping at the next step boundary (again to abort)", file=sys.stderr, flush=True)
        trainer.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def spawn(run_dir: str | Path, resume: str | Path | None = None) -> subprocess.Popen:
    """Starts the trainer in the background, in its own session, logging to trainer.log."""
    run_dir = Path(run_dir)
    cmd = [sys.executable, "-m", "fireflytui.launch", str(run_dir)]
    if resume is not None:
        cmd += ["--resume", str(resume)]
    fd = os.open(run_dir / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    finally:
        os.close(fd)


def wait_for_start(run_dir: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Waits until the trainer logs `start`; a trainer that ends first raises LaunchError."""
    reader = EventReader(run_dir / EVENTS_NAME)
    reader.read()  # a resumed run's earlier events
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in reader.read():
            if event["type"] == "start":
                return
            if event["type"] == "end":
                raise LaunchError(event.get("error") or f"the trainer ended: {event['status']}")
        if proc.poll() is not None:
            last = _last_line(run_dir / LOG_NAME)
            if last.startswith("error: "):  # the trainer's own one-line reason
                raise LaunchError(last.removeprefix("error: "))
            raise LaunchError(f"the trainer exited with code {proc.returncode}: {last}")
        time.sleep(0.1)
    raise LaunchError(
        f"the trainer has not started after {timeout:.0f} s: see {run_dir / LOG_NAME}"
    )


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fireflytui.launch")
    parser.add_argument("run_dir")
    parser.add_argument("--resume")
    args = parser.parse_args(argv)
    try:
        return train_here(args.run_dir, args.resume, sys.stdout)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
