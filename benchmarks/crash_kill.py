"""Crash safety: the trainer killed with SIGKILL at random moments resumes and finishes its run.

Each run trains the demo preset, small (1,024 shapes, a grow step after every epoch but the last,
one thread), through the CLI as a user would: `fireflytui train --headless` in a subprocess of its
own session (or `--detach`, the background launcher). The benchmark follows the run's event log
and sends SIGKILL at a moment drawn from `--seed`, aimed at one of three phases: training steps
(after a random number of mid-epoch `train` events), a grow step in progress (a random delay
after the `growing` state, shorter than a grow step) or a checkpoint write in progress (as soon as
the trainer's temporary checkpoint file appears in the run directory). Where a kill landed is
read after the process is gone: `checkpoint` only if that temporary file is still there, `grow`
only if the log's last state is `growing` with no `grow` event after it, `training` if the last
event is a mid-epoch `train` event or the `running` state, else `other`.

After every kill, with the run directory's lock released, the run's latest checkpoint must load
(metadata, tensors, and the network rebuilt by `fireflytui.load_model`, which then runs a
forward pass), and the event log must read with `seq` strictly increasing. Every
`--tear-every`-th kill that left the log ending cleanly gets half an event line appended, as a
kill inside a long write(2) can leave. Then `fireflytui train --resume RUN_DIR` continues the run
(its `start` event must name that checkpoint, and every line before it must parse: the new
writer has cut any torn line off), and may be killed again, up to `--per-run` times. Finally the
run must end `finished` with every epoch done, exit 0, and leave a log in which every line
parses. Its final per-epoch losses are also compared with an uninterrupted run of the same
config (resume is exact on the CPU), reported beside the three checks.

    python benchmarks/crash_kill.py [--kills 24] [--per-run 6] [--epochs 4] [--width 8]
        [--images 1024] [--seed 0] [--tear-every 3] [--retries 1] [--detach] [--no-reference]
        [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fireflytui import load_model
from fireflytui.checkpoint import latest_checkpoint, read_metadata
from fireflytui.events import EVENTS_NAME, EventReader, read_events
from fireflytui.rundir import is_live, read_pid

PHASES = ("training", "grow", "checkpoint")
START_TIMEOUT = 120.0  # seconds a trainer may take to log `start`
RUN_TIMEOUT = 300.0  # seconds a killed run's last trainer may take to finish
GROW_GUESS = 1.0  # seconds a grow step takes, until the run has logged one
_TMP = re.compile(r"^\.step-\d+-(epoch|grow|user)\.safetensors\.tmp$")
_DONE = re.compile(r"^step-\d+-(epoch|grow|user)\.safetensors$")


class CrashError(Exception):
    """The campaign cannot go on (a trainer that does not start, a kill with no place)."""


@dataclass
class Settings:
    """The config of every run, as `--set` overrides of the demo preset."""

    epochs: int = 4
    width: int = 8
    images: int = 1024  # data.train_subset
    test_images: int = 256  # data.test_subset
    log_every: int = 2  # steps between `train` events
    extra: list[str] = field(default_factory=list)

    def sets(self) -> list[str]:
        return [
            f"train.epochs={self.epochs}",
            f"model.width={self.width}",
            f"data.train_subset={self.images}",
            f"data.test_subset={self.test_images}",
            f"train.log_every={self.log_every}",
            "train.threads=1",
            "growth.every=1",
            f"growth.rounds={self.epochs - 1}",
            *self.extra,
        ]


@dataclass
class Kill:
    """One SIGKILL: where it was aimed and landed, and what the run directory held after it."""

    index: int
    run: str
    aimed: str
    landed: str = ""
    seq: int = 0  # the last complete event in the log at the kill
    step: int = 0  # the trainer's optimizer step at the kill
    moment: str = ""  # when, in words
    checkpoint: str = ""  # the latest checkpoint's file name, or why it did not load
    checkpoint_ok: bool = False
    log_ok: bool = False  # read after the kill, and repaired by the resumed writer
    torn: str = "-"  # "kill": the kill tore the last line; "added": the benchmark did
    resumed: bool = False  # the next trainer started from that checkpoint
    finished: bool = False  # the run then ended finished, every epoch done
    error: str = ""

    @property
    def survived(self) -> bool:
        return self.checkpoint_ok and self.log_ok and self.resumed and self.finished


@dataclass
class RunResult:
    """One run's end: check 3, and how its final losses compare with an unkilled run."""

    name: str
    kills: int = 0
    finished: bool = False
    epochs: int = 0
    starts: int = 0
    matches_reference: bool | None = None
    stale_tmp: list[str] = field(default_factory=list)  # temp files left in the run directory
    error: str = ""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fireflytui.cli", *args]


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


class TrainerProcess:
    """A trainer started through the CLI: headless in a subprocess, or detached."""

    def __init__(self, command: list[str], run_dir: Path, log: Path, detach: bool) -> None:
        self.run_dir = run_dir
        self.popen: subprocess.Popen | None = None
        if detach:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=START_TIMEOUT + 30
            )
            with open(log, "a") as f:
                f.write(done.stdout + done.stderr)
            found = re.search(r"\(pid (\d+)\)", done.stdout)
            if done.returncode != 0 or found is None:
                raise CrashError(f"`{' '.join(command[2:])}` failed: {_last_line(done.stderr)}")
            self.pid = int(found.group(1))
        else:
            with open(log, "ab") as f:
                self.popen = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid = self.popen.pid

    def exited(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        return not _alive(self.pid)

    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait_gone(self, timeout: float = 30.0) -> bool:
        """Waits until the process has exited and the run's lock is free."""
        deadline = time.monotonic() + timeout
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        while self.exited() is False or is_live(self.run_dir):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def log_lines(path: Path) -> tuple[list[dict[str, Any]], bytes, str]:
    """The log's complete lines as JSON, its torn tail, and why it is bad ('' if it is not)."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    events, problem = [], ""
    for number, line in enumerate(data[:end].splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            problem = problem or f"line {number} is not JSON: {line[:60]!r}"
            continue
        if events and event.get("seq", 0) <= events[-1].get("seq", 0):
            problem = problem or f"line {number}: seq {event.get('seq')} after {events[-1]['seq']}"
        events.append(event)
    return events, data[end:], problem


def check_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """Check 1: the run's latest checkpoint, loaded and rebuilt; its path, or None and why."""
    try:
        path = latest_checkpoint(run_dir)
        meta = read_metadata(path)
        model = load_model(path)
        shape = meta["architecture"]["input_shape"]
        with torch.no_grad():
            logits = model(torch.zeros(1, *shape))
        if logits.shape != (1, meta["architecture"]["num_classes"]):
            return None, f"{path.name} gives logits of shape {tuple(logits.shape)}"
        return path, path.name
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return None, f"{type(e).__name__}: {e}"


def check_log_after_kill(run_dir: Path) -> tuple[bool, bool, str]:
    """Check 2, before the resume: the reader copes; returns (ok, torn, why not)."""
    try:
        events = read_events(run_dir)
    except Exception as e:  # noqa: BLE001 - a reader that raises is the finding
        return False, False, f"read_events raised {type(e).__name__}: {e}"
    lines, tail, problem = log_lines(run_dir / EVENTS_NAME)
    if problem:
        return False, bool(tail), problem
    if [e["seq"] for e in events] != [e["seq"] for e in lines]:
        return False, bool(tail), "read_events skipped or added complete lines"
    if not events or events[0]["type"] != "start":
        return False, bool(tail), "the log does not begin with `start`"
    return True, bool(tail), ""


def tear(run_dir: Path) -> None:
    """Appends half of an event line, as a kill in the middle of its write would leave."""
    lines, _, _ = log_lines(run_dir / EVENTS_NAME)
    last = lines[-1]
    event = {"seq": last["seq"] + 1, "time": round(time.time(), 3), "type": "train", "epoch": 1}
    event.update(step=last.get("step", 0), loss=1.2345678, acc=0.5, lr=0.01)
    line = json.dumps(event, separators=(",", ":"))
    with open(run_dir / EVENTS_NAME, "ab") as f:
        f.write(line[: len(line) // 2].encode())


def _tmp_files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """The temporary checkpoint files in the run directory, by name: (inode, mtime)."""
    found = {}
    for name in os.listdir(run_dir):
        if _TMP.match(name):
            try:
                st = os.stat(run_dir / name)
            except FileNotFoundError:
                continue
            found[name] = (st.st_ino, st.st_mtime_ns)
    return found


class Campaign:
    """Runs, kills, resumes and checks; `run()` places every aimed kill and returns the kills."""

    def __init__(
        self,
        out: Path,
        settings: Settings,
        rng: random.Random,
        *,
        per_run: int = 6,
        retries: int = 1,
        tear_every: int = 3,
        detach: bool = False,
        spread: bool = True,
        reference: bool = True,
        say: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.out, self.settings, self.rng = out, settings, rng
        self.per_run, self.retries, self.tear_every = per_run, retries, tear_every
        self.detach, self.spread, self.reference, self.say = detach, spread, reference, say
        self.kills: list[Kill] = []
        self.runs: list[RunResult] = []
        self.reference_epochs: list[tuple] | None = None
        self.grow_seconds: list[float] = []
        self.steps_per_epoch = 0
        self.proc: TrainerProcess | None = None

    # Starting and resuming

    def _launch(self, command: list[str], run_dir: Path) -> tuple[TrainerProcess, EventReader]:
        """Starts a trainer and waits for its `start` event; returns it and a reader after it."""
        reader = EventReader(run_dir / EVENTS_NAME)
        earlier = reader.read()  # the events of earlier trainers
        self.grow_seconds += [e["seconds"] for e in earlier if e["type"] == "grow"]
        mode = "--detach" if self.detach else "--headless"
        self.proc = TrainerProcess(
            command + [mode], run_dir, self.out / f"{run_dir.name}.out", self.detach
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for event in reader.read():
                if event["type"] == "start":
                    self.steps_per_epoch = event["steps_per_epoch"]
                    if read_pid(run_dir) != event["pid"] or event["pid"] != self.proc.pid:
                        raise CrashError(
                            f"{run_dir.name}: trainer pid {self.proc.pid}, but the run says "
                            f"{event['pid']} (trainer.pid: {read_pid(run_dir)})"
                        )
                    return self.proc, reader
                if event["type"] == "end":
                    raise CrashError(f"{run_dir.name}: the trainer ended: {event.get('error')}")
            if self.proc.exited():
                log = (self.out / f"{run_dir.name}.out").read_text(errors="replace")
                raise CrashError(f"{run_dir.name}: the trainer exited: {_last_line(log)}")
            time.sleep(0.02)
        raise CrashError(f"{run_dir.name}: no `start` event after {START_TIMEOUT:.0f} s")

    def start(self, name: str) -> tuple[TrainerProcess, EventReader]:
        command = cli("train", "--preset", "demo", "--out", str(self.out), "--run", name)
        command += [a for s in self.settings.sets() for a in ("--set", s)]
        return self._launch(command, self.out / name)

    def resume(self, run_dir: Path) -> tuple[TrainerProcess, EventReader]:
        return self._launch(cli("train", "--resume", str(run_dir)), run_dir)

    # Kills at a phase; each returns a description of the moment, or None if the run ended first

    def _events(self, proc: TrainerProcess, reader: EventReader) -> list[dict[str, Any]] | None:
        events = reader.read()
        self.grow_seconds += [e["seconds"] for e in events if e["type"] == "grow"]
        if not events and proc.exited():
            events = reader.read()  # the last events, written before it exited
            return events or None
        return events

    def kill_training(self, proc: TrainerProcess, reader: EventReader, run_dir: Path) -> str | None:
        """After the n-th mid-epoch `train` event with a checkpoint on disk, within a step."""
        spe, every = self.steps_per_epoch, self.settings.log_every
        n = self.rng.randint(1, max(1, (spe - 1) // every))
        delay = self.rng.uniform(0.0, 0.01)
        has_checkpoint = any(_DONE.match(p) for p in os.listdir(run_dir))
        count = 0
        while True:
            events = self._events(proc, reader)
            if events is None:
                return None
            for event in events:
                if event["type"] == "checkpoint":
                    has_checkpoint = True
                elif event["type"] == "train" and has_checkpoint and event["step"] % spe:
                    count += 1
                    if count == n:
                        time.sleep(delay)
                        proc.kill()
                        return f"{n} train event{'s' * (n > 1)}, +{delay * 1000:.0f} ms"
            time.sleep(0.002)

    def kill_grow(self, proc: TrainerProcess, reader: EventReader, run_dir: Path) -> str | None:
        """A random delay, shorter than the run's shortest grow step, into a grow step."""
        skip = self.rng.randint(0, 1) if self.spread else 0
        fraction = self.rng.uniform(0.1, 0.7)
        while True:
            events = self._events(proc, reader)
            if events is None:
                return None
            for event in events:
                if event["type"] == "state" and event["state"] == "growing":
                    if skip:
                        skip -= 1
                        continue
                    delay = fraction * min(self.grow_seconds or [GROW_GUESS])
                    time.sleep(delay)
                    proc.kill()
                    return f"+{delay:.2f} s into a grow step"
            time.sleep(0.002)

    def kill_checkpoint(
        self, proc: TrainerProcess, reader: EventReader, run_dir: Path
    ) -> str | None:
        """As soon as a new temporary checkpoint file appears, with a complete one on disk."""
        skip = self.rng.randint(0, 2) if self.spread else 0
        known = set(_tmp_files(run_dir))  # left by earlier kills: not this trainer's writes
        polls = 0
        while True:
            names = os.listdir(run_dir)
            fresh = [n for n in names if n not in known and _TMP.match(n)]
            if fresh and any(_DONE.match(n) for n in names):
                if not skip:
                    proc.kill()
                    return f"missed {fresh[0].lstrip('.').removesuffix('.safetensors.tmp')}"
                skip -= 1
            known.update(fresh)
            polls += 1
            if polls % 512 == 0 and self._events(proc, reader) is None:
                return None

    # Checks

    def landed(self, run_dir: Path, before: dict[str, tuple[int, int]], kill: Kill) -> None:
        """Where the kill landed, read from what the dead trainer left."""
        lines, _, _ = log_lines(run_dir / EVENTS_NAME)
        starts = [i for i, e in enumerate(lines) if e["type"] == "start"]
        mine = lines[starts[-1] :] if starts else lines
        kill.seq = lines[-1]["seq"] if lines else 0
        steps = [e["step"] for e in mine if isinstance(e.get("step"), int)]
        if steps:
            kill.step = steps[-1]
        elif mine:
            kill.step = mine[0]["progress"]["step"]
        writing = {n for n, st in _tmp_files(run_dir).items() if before.get(n) != st}
        states = [i for i, e in enumerate(mine) if e["type"] == "state"]
        last = mine[-1] if mine else {}
        if writing:
            kill.landed = "checkpoint"
            if kill.aimed == "checkpoint":
                name = sorted(writing)[0]
                size = (run_dir / name).stat().st_size
                kill.moment = f"{name.lstrip('.').removesuffix('.safetensors.tmp')}, {size:,} B"
        elif states and mine[states[-1]]["state"] == "growing":
            grown = any(e["type"] == "grow" for e in mine[states[-1] :])
            kill.landed = "other" if grown else "grow"
            if kill.aimed == "grow" and mine:
                round_ = mine[0]["progress"]["round"] + sum(e["type"] == "grow" for e in mine)
                kill.moment += f", round {round_ + (not grown)}"
        elif last.get("type") == "train" and last["step"] % self.steps_per_epoch:
            kill.landed = "training"
        elif last.get("type") == "state" and last["state"] == "running":
            kill.landed = "training"
        else:
            kill.landed = "other"

    def finish(self, run: RunResult, run_dir: Path, proc: TrainerProcess) -> None:
        """Check 3: the run's last trainer ends finished, every epoch done, the log whole."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while not proc.exited():
            if time.monotonic() > deadline:
                run.error = f"not finished after {RUN_TIMEOUT:.0f} s"
                return
            time.sleep(0.05)
        proc.wait_gone()
        lines, tail, problem = log_lines(run_dir / EVENTS_NAME)
        epochs = [e for e in lines if e["type"] == "epoch"]
        run.epochs = max((e["epoch"] for e in epochs), default=0)
        run.starts = sum(e["type"] == "start" for e in lines)
        run.stale_tmp = sorted(_tmp_files(run_dir))
        last = lines[-1] if lines else {}
        final, _ = check_checkpoint(run_dir)
        done = read_metadata(final)["progress"]["epoch"] if final else 0
        wanted = self.settings.epochs
        if problem or tail:
            run.error = problem or f"the log ends with a torn line {tail[:40]!r}"
        elif proc.returncode() not in (0, None):
            run.error = f"the last trainer exited with {proc.returncode()}"
        elif last.get("type") != "end" or last.get("status") != "finished":
            run.error = f"the log ends with {last.get('type')} {last.get('status')}: {last}"
        elif run.epochs != wanted or done != wanted:
            run.error = f"{run.epochs} epochs logged, {done} in the last checkpoint, of {wanted}"
        elif run.starts != run.kills + 1:
            run.error = f"{run.starts} start events for {run.kills} kills"
        else:
            run.finished = True
        if self.reference_epochs is not None:
            run.matches_reference = final_epochs(lines) == self.reference_epochs

    # The campaign

    def run(self, aims: list[str]) -> list[Kill]:
        if self.reference:
            self.say("reference: one run with no kills")
            name = "reference"
            proc, _ = self.start(name)
            ref = RunResult(name)
            self.finish(ref, self.out / name, proc)
            if not ref.finished:
                raise CrashError(f"the uninterrupted reference run failed: {ref.error}")
            events = read_events(self.out / name)
            self.reference_epochs = final_epochs(events)
            self.grow_seconds += [e["seconds"] for e in events if e["type"] == "grow"]
        queue = [(aim, self.retries) for aim in aims]
        while queue:
            run = RunResult(f"run{len(self.runs) + 1}")
            self.runs.append(run)
            try:
                self._one_run(run, queue)
            finally:
                if self.proc is not None and not self.proc.exited():
                    self.proc.kill()
                    self.proc.wait_gone()
            if run.kills == 0 and queue:
                raise CrashError(f"{run.name} ended before a kill aimed at {queue[0][0]} came")
        return self.kills

    def _one_run(self, run: RunResult, queue: list[tuple[str, int]]) -> None:
        run_dir = self.out / run.name
        proc, reader = self.start(run.name)
        mine: list[Kill] = []
        while queue and len(mine) < self.per_run:
            aim, tries = queue[0]
            kill = Kill(len(self.kills) + 1, run.name, aim)
            before = _tmp_files(run_dir)
            moment = getattr(self, f"kill_{aim}")(proc, reader, run_dir)
            if moment is None:
                break  # this run ended first: the aim goes to the next run
            queue.pop(0)
            if not proc.wait_gone():
                kill.error = "the trainer or its lock outlived SIGKILL"
            self.kills.append(kill)
            mine.append(kill)
            run.kills += 1
            kill.moment = moment
            self.landed(run_dir, before, kill)
            if kill.landed != aim and tries > 0:
                queue.insert(0, (aim, tries - 1))
            path, kill.checkpoint = check_checkpoint(run_dir)
            kill.checkpoint_ok = path is not None
            log_ok, torn, why = check_log_after_kill(run_dir)
            kill.torn = "kill" if torn else "-"
            kill.error = kill.error or why
            if log_ok and not torn and self.tear_every and kill.index % self.tear_every == 0:
                tear(run_dir)
                kill.torn = "added"
                log_ok, _, why = check_log_after_kill(run_dir)
                kill.error = kill.error or why
            self.say(
                f"kill {kill.index}: {run.name} aimed {aim}, landed {kill.landed}, "
                f"seq {kill.seq} step {kill.step}: {kill.moment}"
            )
            if path is None:
                kill.error = kill.error or f"no checkpoint to resume from: {kill.checkpoint}"
                return
            proc, reader = self.resume(run_dir)
            lines, _, problem = log_lines(run_dir / EVENTS_NAME)
            start = [e for e in lines if e["type"] == "start"][-1]
            kill.log_ok = log_ok and not problem
            kill.error = kill.error or problem
            kill.resumed = Path(start.get("resumed_from") or "").name == path.name
            if not kill.resumed:
                kill.error = kill.error or f"resumed from {start.get('resumed_from')}"
        self.finish(run, run_dir, proc)
        for kill in mine:
            kill.finished = run.finished
            kill.error = kill.error or run.error
        self.say(f"{run.name}: {run.kills} kill(s), " + ("finished" if run.finished else run.error))


def final_epochs(events: list[dict[str, Any]]) -> list[tuple]:
    """Per epoch, the losses and accuracy of its last `epoch` event (a resumed run repeats some)."""
    last = {e["epoch"]: e for e in events if e["type"] == "epoch"}
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "params")
    return [tuple(last[n].get(k) for k in keys) for n in sorted(last)]


def plan(kills: int, rng: random.Random) -> list[str]:
    """The aimed phases: as even as `kills` allows, in a random order."""
    aims = [PHASES[i % len(PHASES)] for i in range(kills)]
    rng.shuffle(aims)
    return aims


def table(kills: list[Kill]) -> str:
    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    head = (
        f"{'#':>3}  {'run':<5} {'aimed':<10} {'landed':<10} {'seq':>5} {'step':>5}  "
        f"{'moment':<34} {'checkpoint loads':<30} {'log':<4} {'torn':<5} {'resumed to end'}"
    )
    rows = [head]
    for k in kills:
        loaded = f"{yes(k.checkpoint_ok)} {k.checkpoint.removesuffix('.safetensors')}"
        rows.append(
            f"{k.index:>3}  {k.run:<5} {k.aimed:<10} {k.landed:<10} {k.seq:>5} {k.step:>5}  "
            f"{k.moment[:34]:<34} {loaded[:30]:<30} {yes(k.log_ok):<4} {k.torn:<5} "
            f"{yes(k.resumed and k.finished)}"
        )
        if k.error:
            rows.append(f"     ! {k.error}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24, help="Kills in all (at least 1).")
    parser.add_argument("--per-run", type=int, default=6, help="Kills per run before it finishes.")
    parser.add_argument("--epochs", type=int, default=4, help="train.epochs of each run (>= 2).")
    parser.add_argument("--width", type=int, default=8, help="model.width of the demo network.")
    parser.add_argument("--images", type=int, default=1024, help="data.train_subset (>= 128).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill moments.")
    parser.add_argument(
        "--tear-every", type=int, default=3, help="Tear the log after every N-th kill (0: never)."
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="Extra kills for an aim that lands elsewhere."
    )
    parser.add_argument("--detach", action="store_true", help="Start trainers with --detach.")
    parser.add_argument("--no-reference", action="store_true", help="Skip the unkilled run.")
    parser.add_argument("--keep", metavar="DIR", help="Write the runs under DIR and keep them.")
    parser.add_argument("--json", action="store_true", help="End with one JSON line.")
    args = parser.parse_args()
    if args.kills < 1 or args.per_run < 1 or args.width < 1:
        parser.error("--kills, --per-run and --width must be at least 1")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: a grow step needs an epoch after it")
    if args.images < 128:
        parser.error("--images must be at least 128: two training steps per epoch")
    if args.tear_every < 0 or args.retries < 0:
        parser.error("--tear-every and --retries must be at least 0")
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        parser.error(f"--keep {args.keep} is not empty: name a new or empty directory")

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    settings = Settings(epochs=args.epochs, width=args.width, images=args.images)
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="crash-kill-"))
    out.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(
        out,
        settings,
        rng,
        per_run=args.per_run,
        retries=args.retries,
        tear_every=args.tear_every,
        detach=args.detach,
        reference=not args.no_reference,
        say=lambda text: print(f"  {text}", file=sys.stderr, flush=True),
    )
    started = time.perf_counter()
    try:
        kills = campaign.run(plan(args.kills, rng))
    except CrashError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    seconds = time.perf_counter() - started

    survived = sum(k.survived for k in kills)
    landed = Counter(k.landed for k in kills)
    aimed = Counter(k.aimed for k in kills)
    runs = campaign.runs
    matched = [r.matches_reference for r in runs if r.matches_reference is not None]
    stale = sorted({f"{r.name}/{n}" for r in runs for n in r.stale_tmp})
    print(table(kills))
    print(
        f"kills survived: {survived}/{len(kills)} ("
        + ", ".join(
            f"{p} {landed.get(p, 0)}" for p in (*PHASES, "other") if landed.get(p) or p in PHASES
        )
        + "; aimed "
        + ", ".join(f"{p} {aimed.get(p, 0)}" for p in PHASES)
        + ")"
    )
    print(
        f"runs: {len(runs)}, {sum(r.finished for r in runs)} finished all {args.epochs} epochs; "
        f"final losses equal to an unkilled run's: "
        + (f"{sum(matched)}/{len(matched)}" if matched else "not compared")
    )
    print(
        f"torn last lines: {sum(k.torn == 'kill' for k in kills)} left by kills, "
        f"{sum(k.torn == 'added' for k in kills)} added, all cut off by the next trainer"
        if all(k.log_ok for k in kills if k.torn != "-")
        else "torn last lines: some were NOT repaired"
    )
    print(
        f"temporary checkpoint files left at the end: {', '.join(stale) if stale else 'none'}; "
        f"{seconds:.0f} s, seed {args.seed}" + (f"; runs kept in {out}" if args.keep else "")
    )
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "crash_kill",
                    "kills": len(kills),
                    "survived": survived,
                    "landed": {p: landed.get(p, 0) for p in (*PHASES, "other")},
                    "aimed": {p: aimed.get(p, 0) for p in PHASES},
                    "runs": [asdict(r) for r in runs],
                    "reference_matches": sum(matched) if matched else None,
                    "stale_tmp": stale,
                    "seconds": seconds,
                    "seed": args.seed,
                    "settings": asdict(settings),
                    "detach": args.detach,
                    "kill_list": [{**asdict(k), "survived": k.survived} for k in kills],
                }
            )
        )
    sys.exit(0 if survived == len(kills) else 1)


if __name__ == "__main__":
    main()
