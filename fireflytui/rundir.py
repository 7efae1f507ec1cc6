"""The run directory: its files, its owner-only mode, the trainer's lock, and run lookup.

Standard library only: the CLI's `runs`/`ctl` and the monitor app use it without torch.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fireflytui.events import EVENTS_NAME, read_events

CONFIG_NAME = "run.toml"
LOCK_NAME = "trainer.lock"
PID_NAME = "trainer.pid"
LOG_NAME = "trainer.log"
DEFAULT_OUT = Path("checkpoints")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RunError(Exception):
    """A run directory problem, with a one-line message for the user."""


def new_run_name(prefix: str) -> str:
    """`<prefix>-<YYYYmmdd-HHMMSS>`, the default name of a new run."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.") or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(out: str | Path, name: str) -> Path:
    """Makes `out/name` with mode 0700; refuses a name that is taken or not a plain name."""
    if not _NAME.match(name):
        raise RunError(
            f"run name {name!r} is not usable: use letters, digits, '.', '_' or '-' (--run NAME)"
        )
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the output directory {out}: {e.strerror}") from None
    path = out / name
    if path.exists():
        # Two runs started in the same second get distinct names.
        if not re.search(r"-\d{8}-\d{6}(-\d+)?$", name):
            raise RunError(
                f"run directory {path} already exists: choose another --run NAME, "
                f"or continue it with --resume {path}"
            )
        for i in range(2, 100):
            candidate = out / f"{name}-{i}"
            if not candidate.exists():
                path = candidate
                break
    try:
        path.mkdir(mode=0o700)
    except OSError as e:
        raise RunError(f"cannot create the run directory {path}: {e.strerror}") from None
    os.chmod(path, 0o700)
    return path


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / EVENTS_NAME).exists() or (path / CONFIG_NAME).exists())


def list_run_dirs(out: str | Path) -> list[Path]:
    """Run directories under `out`, oldest first (by when their log last changed)."""
    out = Path(out).expanduser()
    if not out.is_dir():
        return []
    runs = [p for p in out.iterdir() if is_run_dir(p)]
    return sorted(runs, key=_last_change)


def _last_change(path: Path) -> float:
    for name in (EVENTS_NAME, CONFIG_NAME):
        try:
            return (path / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def resolve_run(run: str | None, out: str | Path = DEFAULT_OUT) -> Path:
    """A RUN argument: a run name under `out`, a path to a run directory, or None for the latest."""
    out = Path(out).expanduser()
    if run is None:
        runs = list_run_dirs(out)
        if not runs:
            raise RunError(f"no runs in {out}: start one with `fireflytui train --preset demo`")
        return runs[-1]
    path = Path(run).expanduser()
    for candidate in (path, out / run):
        if is_run_dir(candidate):
            return candidate
    known = [p.name for p in list_run_dirs(out)][-5:]
    hint = f"; recent runs: {', '.join(known)}" if known else ""
    raise RunError(f"no run {run!r} (looked for {path} and {out / run}){hint}")


class TrainerLock:
    """The trainer's exclusive hold on a run directory: a flock on `trainer.lock` plus its pid."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> TrainerLock:
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                pid = read_pid(self.run_dir)
                owner = f" (pid {pid})" if pid else ""
                raise RunError(
                    f"run {self.run_dir} is in use by a live trainer{owner}: attach to it, or "
                    f"stop it with `fireflytui ctl {self.run_dir} stop`"
                ) from None
            raise
        self._fd = fd
        _write_atomic(self.run_dir / PID_NAME, f"{os.getpid()}\n")
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                (self.run_dir / PID_NAME).unlink(missing_ok=True)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> TrainerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_pid(run_dir: str | Path) -> int | None:
    try:
        return int((Path(run_dir) / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def is_live(run_dir: str | Path) -> bool:
    """True while a trainer holds the run's lock (it is released when the process dies)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file, fsync and rename (mode 0600)."""
    _write_atomic(Path(path), text)


@dataclass
class RunSummary:
    """What `fireflytui runs` shows of one run, read from its event log."""

    name: str
    path: Path
    state: str  # running | paused | growing | finished | stopped | failed | starting
    live: bool
    epoch: int
    epochs: int | None
    params: int | None
    test_acc: float | None
    rounds: int
    started: float | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def summarize(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    events = read_events(run_dir / EVENTS_NAME)
    live = is_live(run_dir)
    state, note = "starting" if live else "failed", ""
    epoch, epochs, params, acc, rounds, started = 0, None, None, None, 0, None
    for e in events:
        kind = e["type"]
        if kind == "start":
            started = started or e.get("time")
            params = e.get("params", params)
            epochs = (e.get("config") or {}).get("train", {}).get("epochs", epochs)
            state = "running"
        elif kind == "epoch":
            epoch, params, acc = e.get("epoch", epoch), e.get("params", params), e.get("test_acc")
        elif kind == "grow":
            rounds, params = e.get("round", rounds), e.get("params_after", params)
        elif kind == "state":
            state = e.get("state", state)
        elif kind == "end":
            state, note = e.get("status", state), e.get("error") or ""
    if not live and state in ("starting", "running", "paused", "growing"):
        state, note = "failed", "the trainer is gone without an end event (killed?)"
    return RunSummary(
        run_dir.name, run_dir, state, live, epoch, epochs, params, acc, rounds, started, note
    )
