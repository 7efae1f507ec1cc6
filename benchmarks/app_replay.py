"""How fast the monitor opens on a long run's event log, and how much memory it keeps.

Writes a synthetic `events.jsonl` of N events shaped like a long VGG-19 run (16 units, a `train`
event per log interval, an `epoch` and a `checkpoint` per 50 of those, a grow step with per-unit
neuron lists every 10 epochs, a command now and then), then, for each size, in a fresh process:
opens the monitor headless at 120x40 and times it until the whole log has been folded in and
drawn, records the process's peak memory, and, after that, times plain `read_events` on the same
file in the same process: the baseline of the ratio. The acceptance bar is 100,000 events in
under 3 s; the peak memory of the 10x longer log should stay about the same.

    python benchmarks/app_replay.py [--events 10000 100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNITS = 16  # VGG-19's growable units
TRAINS_PER_EPOCH = 50  # `train` events per epoch
EPOCHS_PER_GROW = 10


def write_log(path: Path, count: int, seed: int = 0) -> None:
    """A plausible event log of exactly `count` events."""
    rng = random.Random(seed)
    widths = [16] * UNITS
    names = [f"conv{i + 1}" for i in range(UNITS)]
    seq, step, epoch, now = 0, 0, 0, 1.8e9
    lines: list[str] = []

    def emit(type_: str, **fields) -> None:
        nonlocal seq
        seq += 1
        lines.append(json.dumps({"seq": seq, "time": round(now, 3), "type": type_, **fields}))

    emit(
        "start",
        config={"data": {"batch_size": 128}, "train": {"epochs": 10**6}},
        architecture={
            "name": "vgg19",
            "widths": widths,
            "units": [{"name": n, "width": w} for n, w in zip(names, widths, strict=True)],
        },
        params=35_674,
        pid=1,
        resumed_from=None,
        device="cuda",
        epochs=10**6,
        steps_per_epoch=391,
        progress={"epoch": 0, "step": 0},
        settings={"eta": 0, "ratio": 0.3, "every": EPOCHS_PER_GROW, "lr": 0.1},
    )
    emit("state", state="running")
    while seq < count:
        for _ in range(TRAINS_PER_EPOCH):
            step += 8
            now += 0.5
            loss = 2.3 * 0.999**step + 0.05 * rng.random()
            emit(
                "train",
                epoch=epoch + 1,
                step=step,
                loss=loss,
                acc=1 - loss / 2.5,
                lr=0.1,
                images_per_second=9000 + 500 * rng.random(),
            )
        epoch += 1
        emit(
            "epoch",
            epoch=epoch,
            step=step,
            seconds=20.0,
            train_loss=loss,
            train_acc=0.5,
            test_loss=loss,
            test_acc=min(0.95, 0.3 + epoch / 400),
            params=sum(widths) * 900,
            images=50_000,
            images_per_second=9000.0,
            lr=0.0,
            widths=widths,
            best_acc=0.9,
        )
        emit(
            "checkpoint",
            path=f"step-{step:07d}-epoch.safetensors",
            kind="epoch",
            epoch=epoch,
            step=step,
            seconds=0.2,
            bytes=10**8,
        )
        if epoch % 7 == 0:
            emit(
                "control",
                command="set",
                args={"eta": "64"},
                ok=True,
                error=None,
                applied_step=step,
                id="x",
            )
        if epoch % EPOCHS_PER_GROW == 0:
            units = []
            for name, width in zip(names, widths, strict=True):
                split = sorted(rng.sample(range(width), k=min(width, rng.randint(0, 6))))
                new = rng.randint(0, 4)
                units.append(
                    {
                        "name": name,
                        "width_before": width,
                        "width_after": width + len(split) + new,
                        "split": split,
                        "new": new,
                        "split_scores": [-0.01] * len(split),
                        "new_scores": [-0.01] * new,
                    }
                )
            before = sum(widths) * 900
            widths = [u["width_after"] for u in units]
            emit(
                "grow",
                round=epoch // EPOCHS_PER_GROW,
                epoch=epoch,
                step=step,
                method="firefly",
                eta=sum(len(u["split"]) + u["new"] for u in units),
                trigger="schedule",
                seconds=5.0,
                params_before=before,
                params_after=sum(widths) * 900,
                predicted_loss_change=-0.02,
                measured_loss_change=-0.01,
                units=units,
                error=None,
            )
    path.write_text("\n".join(lines[:count]) + "\n")


def peak_memory_mb() -> float:
    """This process's peak resident memory, MB (Linux: VmHWM, which is not inherited on exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(run_dir: Path) -> dict:
    """Opens the monitor on `run_dir` in this process and measures it."""
    from fireflytui.app import MonitorApp
    from fireflytui.events import read_events

    async def open_app() -> tuple[float, dict]:
        started = time.perf_counter()
        app = MonitorApp(run_dir, live=lambda run: False)
        async with app.run_test(size=(120, 40)) as pilot:
            while not app.replayed.is_set():
                await pilot.pause(0.01)
            seconds = time.perf_counter() - started
            h = app.history
            kept = {
                "events": h.events,
                "loss_points": len(h.train_loss.points()),
                "acc_points": len(h.test_acc.points()),
                "rounds": len(h.rounds),
                "log_lines": len(h.log),
            }
        return seconds, kept

    seconds, kept = asyncio.run(open_app())
    peak_mb = peak_memory_mb()
    started = time.perf_counter()
    events = read_events(run_dir)
    parse = time.perf_counter() - started
    assert len(events) == kept["events"], (len(events), kept)
    return {"open_s": seconds, "parse_s": parse, "peak_mb": peak_mb, **kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--json", action="store_true", help="End with one JSON line.")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    if any(n < 10 for n in args.events):
        parser.error("--events: each size must be at least 10 events")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.events:
            run_dir = Path(tmp) / f"run-{count}"
            run_dir.mkdir()
            write_log(run_dir / "events.jsonl", count)
            size_mb = (run_dir / "events.jsonl").stat().st_size / 1e6
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(run_dir)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"events": count, "log_mb": round(size_mb, 1), **result})

    print(
        f"{'events':>8} {'log MB':>7} {'open s':>7} {'parse s':>8} {'x parse':>8} "
        f"{'peak MB':>8} {'loss pts':>8} {'rounds':>6} {'log lines':>9}"
    )
    for r in rows:
        print(
            f"{r['events']:>8,} {r['log_mb']:>7.1f} {r['open_s']:>7.2f} {r['parse_s']:>8.2f} "
            f"{r['open_s'] / r['parse_s']:>8.1f} {r['peak_mb']:>8.0f} {r['loss_points']:>8} "
            f"{r['rounds']:>6} {r['log_lines']:>9}"
        )
    print("open s: monitor start until the whole log is folded in and drawn (bar: < 3 s at 100k)")
    print("x parse: open s over plain read_events of the same file in the same process")
    if args.json:
        print(json.dumps({"benchmark": "app_replay", "runs": rows}))


if __name__ == "__main__":
    main()
