"""The run's event log, `events.jsonl`: one JSON object per line, append-only.

The trainer is the only writer. Readers (the CLI, the monitor app) tolerate a torn last line, which
a kill during a write can leave; the next writer cuts it off before appending. Standard library
only, so the app can read a run without importing torch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EVENTS_NAME = "events.jsonl"

EVENT_TYPES = ("start", "epoch", "train", "grow", "checkpoint", "control", "state", "end")
STATES = ("running", "paused", "growing", "finished", "stopped", "failed")


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot carry (NaN, inf) become null; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class EventLog:
    """Appends events to `path`, numbering them with `seq` and flushing each one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.seq = _repair(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, type: str, *, sync: bool = False, **fields: Any) -> dict[str, Any]:
        """Writes one event and returns it; `sync` also forces it to disk (fsync)."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        self.seq += 1
        event = {"seq": self.seq, "time": round(time.time(), 3), "type": type, **fields}
        event = _jsonable(event)
        self._file.write(json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())
        return event

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair(path: Path) -> int:
    """Cuts a torn last line off `path` and returns the last `seq` written (0 if none)."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
    last = 0
    for line in data[:end].splitlines()[-16:]:
        try:
            last = max(last, int(json.loads(line)["seq"]))
        except (ValueError, KeyError, TypeError):
            continue
    return last


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One event from one complete line, or None if the line is not a valid event."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete, valid event in the log, in order; a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / EVENTS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    data = data[: data.rfind(b"\n") + 1]
    return [e for e in map(parse_line, data.splitlines()) if e is not None]


class EventReader:
    """Reads a growing log incrementally: each `read()` returns the events appended since."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path / EVENTS_NAME if path.is_dir() else path
        self.offset = 0
        self._inode: int | None = None

    def read(self, limit: int = 1 << 24) -> list[dict[str, Any]]:
        """New complete events, reading at most `limit` bytes."""
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if self._inode is not None and inode != self._inode:
                    self.offset = 0  # the file was replaced: start over
                self._inode = inode
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                data = f.read(min(limit, size - self.offset))
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [e for e in map(parse_line, data[:end].splitlines()) if e is not None]

    def follow(self, interval: float = 0.25, stop: Any = None) -> Iterator[dict[str, Any]]:
        """Yields events as they are appended, polling every `interval` s until `stop()` is true."""
        while stop is None or not stop():
            events = self.read()
            yield from events
            if not events:
                time.sleep(interval)
