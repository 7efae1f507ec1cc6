"""Training throughput with the monitor attached, against the same run with nothing attached.

One background trainer (`fireflytui train --detach`, the demo preset with growth off, so the
network and its speed stay the same throughout) trains for many epochs. The benchmark cuts them
into blocks and, in every other block, runs the monitor
(`fireflytui attach`) beside it in a pseudo-terminal of 100x30 that is read and thrown away, as a
user's terminal would be. The monitor starts at the beginning of its block and quits at the end.
Timing starts with the first epoch that begins after the monitor has drawn the run (its status
line shows `live`), and in the other blocks after one epoch, so the monitor's start-up, a
one-time cost per attach reported on its own, is left out of both modes. Blocks come in
pairs (alone then attached); the ratio is the median over pairs of attached/alone, so that a
noisy machine's drift, slower than a pair, cancels. The figure is the trainer's own: training
images over training seconds of its `epoch` events. The acceptance bar is a ratio of >= 0.95.

    python benchmarks/app_attached.py [--pairs 8] [--timed 3] [--width 24] [--threads 0] [--json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from fireflytui.events import EventReader
from fireflytui.rundir import is_live

COLUMNS, ROWS = 100, 30


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fireflytui.cli", *args]


def start_trainer(out: Path, args: argparse.Namespace, epochs: int) -> Path:
    sets = [
        f"train.epochs={epochs}",
        f"train.threads={args.threads}",
        f"model.width={args.width}",
        "growth.method=none",
        "growth.rounds=0",
    ]
    command = cli("train", "--preset", "demo", "--detach", "--out", str(out), "--run", "bench")
    subprocess.run(
        command + [a for s in sets for a in ("--set", s)], check=True, capture_output=True
    )
    return out / "bench"


class Monitor:
    """`fireflytui attach` in a pseudo-terminal whose output is drained as a terminal would."""

    def __init__(self, run_dir: Path) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(
            cli("attach", str(run_dir)),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.ready = threading.Event()  # set once the monitor has drawn the live run
        self.tail = b""  # the last of its output, until then
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            if not self.ready.is_set():
                self.tail = self.tail[-4096:] + data
                if b"live" in self.tail:
                    self.ready.set()

    def quit(self) -> float:
        """Quits the monitor with its `q` key; returns the CPU seconds it used."""
        os.write(self.master, b"q")
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.reader.join(5)
        os.close(self.master)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the monitor exited with {os.waitstatus_to_exitcode(status)}")
        return usage.ru_utime + usage.ru_stime


def epoch_events(run_dir: Path):
    """Yields the run's `epoch` events as the trainer writes them."""
    reader = EventReader(run_dir)
    while True:
        events = reader.read()
        for event in events:
            if event["type"] == "epoch":
                yield event
            elif event["type"] == "end":
                raise SystemExit(f"the trainer ended early: {event.get('error')}")
        if not events:
            time.sleep(0.05)


def measure(run_dir: Path, args: argparse.Namespace, rates: dict, cpu: list) -> None:
    """Times `2 * args.pairs` blocks of the run, the monitor attached in every other one."""
    epochs = epoch_events(run_dir)
    next(epochs)  # the first epoch warms everything up and is not timed
    for block in range(2 * args.pairs):
        mode = "attached" if block % 2 else "alone"
        started = time.perf_counter()
        monitor = Monitor(run_dir) if mode == "attached" else None
        if monitor is not None and not monitor.ready.wait(60):
            shown = monitor.tail[-600:].decode(errors="replace")
            raise SystemExit(f"the monitor did not draw the run within 60 s; it showed {shown!r}")
        next(epochs)  # the epoch in progress, which the monitor's start-up may have slowed
        timed = [next(epochs) for _ in range(args.timed)]
        if monitor is not None:
            cpu.append((monitor.quit(), time.perf_counter() - started))
        rate = sum(e["images"] for e in timed) / sum(e["seconds"] for e in timed)
        rates[mode].append(rate)
        print(f"  block {block + 1:>2} {mode:<9} {rate:>8,.0f} images/s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="Pairs of blocks (alone, attached).")
    parser.add_argument("--timed", type=int, default=3, help="Timed epochs per block.")
    parser.add_argument("--width", type=int, default=24, help="model.width of the demo network.")
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: torch's).")
    parser.add_argument("--json", action="store_true", help="End with one JSON line.")
    args = parser.parse_args()
    if args.pairs < 1 or args.timed < 1 or args.width < 1:
        parser.error("--pairs, --timed and --width must be at least 1")

    rates: dict[str, list[float]] = {"alone": [], "attached": []}
    cpu: list[tuple[float, float]] = []  # monitor CPU seconds, and its block's wall seconds
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = start_trainer(Path(tmp), args, epochs=1000)  # stopped when measured
        try:
            measure(run_dir, args, rates, cpu)
        finally:
            subprocess.run(cli("ctl", str(run_dir), "stop"), capture_output=True)
            while is_live(run_dir):
                time.sleep(0.2)

    pairs = [b / a for a, b in zip(rates["alone"], rates["attached"], strict=True)]
    ratio = statistics.median(pairs)
    alone, attached = statistics.median(rates["alone"]), statistics.median(rates["attached"])
    print(f"{'mode':<10} {'images/s':>9}  blocks")
    for mode in ("alone", "attached"):
        shown = ", ".join(f"{v:,.0f}" for v in rates[mode])
        print(f"{mode:<10} {statistics.median(rates[mode]):>9,.0f}  {shown}")
    print(
        f"ratio attached/alone: {ratio:.3f}, median of {len(pairs)} pairs "
        f"({min(pairs):.2f}-{max(pairs):.2f}); bar: >= 0.95"
    )
    print(
        f"monitor CPU per attached block: {statistics.mean(c for c, _ in cpu):.2f} s "
        f"in {statistics.mean(w for _, w in cpu):.1f} s, start-up included"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "app_attached",
                    "ratio": ratio,
                    "pair_ratios": pairs,
                    "alone": rates["alone"],
                    "attached": rates["attached"],
                    "median_alone": alone,
                    "median_attached": attached,
                    "monitor_cpu_s": [c for c, _ in cpu],
                    "block_wall_s": [w for _, w in cpu],
                    "width": args.width,
                    "threads": args.threads,
                }
            )
        )


if __name__ == "__main__":
    main()
