"""Training throughput of the Trainer against a minimal PyTorch loop on the same model and data.

Both train thin VGG-19 (16 channels) from the same initial weights on the same in-memory data
(one `Batches` each, same seed: uint8 images on the device, batch-wise crop and flip), with the
same batch size and the same SGD (Nesterov momentum, weight decay, lr), in this one process, so
the ratio holds on a noisy machine. Both run the network in the memory layout the trainer's
`train.channels_last` picks. Growth is off. The trainer runs as in real use: event log,
control socket, learning-rate schedule, loss and accuracy sums, an evaluation and a checkpoint
after every epoch. Its figure is the training time of its `epoch` events, which leaves out the
evaluation and the checkpoint; whole-epoch wall time with both is reported beside it.

    python benchmarks/train_throughput.py [--images N] [--epochs E] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fireflytui import build_model, default_architecture
from fireflytui.config import Config, ConfigError, load_preset
from fireflytui.data import DataError, Dataset, channel_stats, load_dataset, make_shapes
from fireflytui.events import read_events
from fireflytui.trainer import Trainer, TrainingError, resolve_device

PRESET = "vgg19-cifar10"
SEED = 0  # of the data, the batch order and the initial weights of both loops


class BenchmarkError(Exception):
    """Bad arguments or data; the message is one line that says how to fix it."""


@dataclass
class Run:
    """One measured run of either loop: per-epoch training seconds and images."""

    seconds: list[float] = field(default_factory=list)  # training time per epoch, s
    images: list[int] = field(default_factory=list)  # training images per epoch
    wall: list[float] = field(default_factory=list)  # whole epoch incl. eval and checkpoint, s
    checkpoint: list[float] = field(default_factory=list)  # checkpoint write per epoch, s
    window_rates: list[float] = field(default_factory=list)  # `train` events, images/s
    params: int = 0  # trainable parameters of the network

    @property
    def rate(self) -> float:
        """Training images per second over all epochs."""
        return sum(self.images) / sum(self.seconds)

    @property
    def wall_rate(self) -> float:
        """Images per second of whole epochs, evaluation and checkpoint included."""
        return sum(self.images) / sum(self.wall)


def build_dataset(args: argparse.Namespace) -> Dataset:
    """The train and test images both loops read, held in memory."""
    if args.data == "imagefolder":
        return load_dataset(
            "imagefolder",
            args.data_dir,
            seed=SEED,
            train_subset=args.images,
            test_subset=args.test_images,
        )
    train = make_shapes(args.images, SEED)
    test = make_shapes(args.test_images, SEED + 1)
    mean, std = channel_stats(train.images)
    return Dataset("shapes", train, test, mean, std, source="shapes")


def trainer_config(args: argparse.Namespace) -> Config:
    """The preset with this benchmark's sizes, growth off, and the user's `--set` items."""
    source = ["data.source=shapes"]
    if args.data == "imagefolder":
        source = ["data.source=imagefolder", f"data.dir={args.data_dir}"]
    config = load_preset(PRESET).with_overrides(
        [
            f"model.name={args.model}",
            f"model.width={args.width}",
            *source,
            f"data.batch_size={args.batch_size}",
            f"train.epochs={args.epochs}",
            f"train.threads={args.threads}",
            f"train.device={args.device}",
            f"train.seed={SEED}",
            "growth.method=none",
            "growth.rounds=0",
            *args.set,
        ]
    )
    if config.growth.method != "none" and config.growth.rounds > 0:
        raise BenchmarkError(
            "this benchmark compares training only: drop the --set that turns growth on"
        )
    return config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_trainer(config: Config, dataset: Dataset, root: Path) -> tuple[Run, dict]:
    """One trainer run in a fresh run directory; returns its run and its initial weights."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    marks: list[tuple[float, dict[str, Any]]] = []

    def on_event(event: dict[str, Any]) -> None:
        marks.append((time.perf_counter(), event))

    trainer = Trainer(config, run_dir, on_event=on_event, dataset=dataset, control=True)
    initial = state_copy(trainer.model)
    params = trainer.model.num_params()
    status = trainer.run()
    if status != "finished":
        errors = [e.get("error") for e in read_events(run_dir) if e["type"] == "end"]
        raise BenchmarkError(f"the trainer ended {status}: {errors[-1] if errors else '?'}")

    run = Run(params=params)
    began = next(t for t, e in marks if e["type"] == "start")
    for t, event in marks:
        if event["type"] == "epoch":
            run.seconds.append(event["seconds"])
            run.images.append(event["images"])
        elif event["type"] == "checkpoint" and event["kind"] == "epoch":
            run.checkpoint.append(event["seconds"])
            run.wall.append(t - began)
            began = t
        elif event["type"] == "train" and event["images_per_second"]:
            run.window_rates.append(event["images_per_second"])
    return run, initial


def run_plain(config: Config, dataset: Dataset) -> tuple[Run, dict]:
    """The same training as a minimal loop: forward, loss, backward, step; nothing else."""
    device = resolve_device(config.train.device)
    train, model_cfg = config.train, config.model
    torch.manual_seed(train.seed)
    arch = default_architecture(
        model_cfg.name,
        num_classes=dataset.num_classes,
        input_shape=dataset.input_shape,
        width=model_cfg.width or None,
    )
    model = build_model(arch).to(device)
    initial = state_copy(model)
    layout = torch.channels_last if train.channels_last else torch.contiguous_format
    model.to(memory_format=layout)  # the same model in the same memory layout as the trainer's
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.momentum > 0,
        weight_decay=train.weight_decay,
    )
    batches = dataset.batches(
        True,
        config.data.batch_size,
        device=device,
        seed=train.seed,
        augment=config.data.augment,
    )
    model.train()
    run = Run(params=model.num_params())
    for _ in range(train.epochs):
        start = time.perf_counter()
        seen = 0
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
            loss.backward()
            optimizer.step()
            seen += y.shape[0]
        sync(device)
        seconds = time.perf_counter() - start
        run.seconds.append(seconds)
        run.wall.append(seconds)
        run.images.append(seen)
    return run, initial


def warm_up(config: Config, dataset: Dataset, steps: int) -> None:
    """A few plain steps on a throwaway model, so neither loop pays the first-call costs."""
    if steps <= 0:
        return
    device = resolve_device(config.train.device)
    model = build_model(
        default_architecture(
            config.model.name,
            num_classes=dataset.num_classes,
            input_shape=dataset.input_shape,
            width=config.model.width or None,
        )
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = dataset.batches(True, config.data.batch_size, device=device, seed=SEED + 1)
    for step, (x, y) in enumerate(batches):
        if step >= steps:
            break
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    sync(device)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        choices=["shapes", "imagefolder"],
        help="shapes: generated, offline (default); imagefolder: needs --data-dir",
    )
    parser.add_argument("--data-dir", help="image-folder tree (DIR/train/<class>/, DIR/test/)")
    parser.add_argument("--images", type=int, default=10_000, help="training images")
    parser.add_argument("--test-images", type=int, default=1_000, help="evaluated images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop; best counts")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the runs")
    parser.add_argument("--model", default="vgg19", help="network family")
    parser.add_argument("--width", type=int, default=16, help="starting neurons per unit")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra trainer config override; the plain loop follows its data and optimiser keys",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.data is None:
        args.data = "imagefolder" if args.data_dir else "shapes"
    if args.data == "imagefolder" and not args.data_dir:
        parser.error("--data imagefolder needs --data-dir DIR (DIR/train/<class>/*)")
    if args.data == "shapes" and args.data_dir:
        parser.error("--data shapes generates its images: drop --data-dir or use imagefolder")
    for name in ("images", "test_images", "epochs", "batch_size", "threads", "repeats", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def table(rows: list[tuple[str, str, str]]) -> str:
    head = ("quantity", "trainer", "plain loop")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [f"{head[0]:<{widths[0]}}  {head[1]:>{widths[1]}}  {head[2]:>{widths[2]}}"]
    for a, b, c in rows:
        lines.append(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    try:
        config = trainer_config(args)
        torch.set_num_threads(args.threads)
        # Denormal floats are many times slower on CPUs; the trainer flushes them, so both do.
        torch.set_flush_denormal(True)
        dataset = build_dataset(args)
        load_before = os.getloadavg()
        warm_up(config, dataset, args.warmup)
        trainer_runs: list[Run] = []
        plain_runs: list[Run] = []
        initial: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="fireflytui-throughput-") as tmp:
            for repeat in range(args.repeats):
                order = ("trainer", "plain") if repeat % 2 == 0 else ("plain", "trainer")
                for which in order:
                    if which == "trainer":
                        run, initial["trainer"] = run_trainer(config, dataset, Path(tmp))
                        trainer_runs.append(run)
                    else:
                        run, initial["plain"] = run_plain(config, dataset)
                        plain_runs.append(run)
        load_after = os.getloadavg()
    except (BenchmarkError, ConfigError, DataError, TrainingError) as e:
        raise SystemExit(f"train_throughput: {e}") from None

    trainer = max(trainer_runs, key=lambda r: r.rate)
    plain = max(plain_runs, key=lambda r: r.rate)
    ratio = trainer.rate / plain.rate
    same_init = same_weights(initial["trainer"], initial["plain"])
    params = plain.params
    data = f"{args.data_dir} (image folder)" if args.data == "imagefolder" else "shapes"
    epochs = len(trainer.images)
    per_epoch = sum(trainer.images) // max(1, epochs)
    ckpt = statistics.mean(trainer.checkpoint)
    other = (sum(trainer.wall) - sum(trainer.seconds) - sum(trainer.checkpoint)) / epochs
    window = f"{statistics.median(trainer.window_rates):.1f}" if trainer.window_rates else "-"

    def rates(runs: list[Run]) -> str:
        return ", ".join(f"{r.rate:.1f}" for r in runs)

    print(f"model      {args.model}, width {args.width} ({params:,} parameters)")
    print(f"data       {data}: {per_epoch:,} train images/epoch, {len(dataset.test):,} test")
    print(
        f"setup      batch {args.batch_size}, {epochs} epochs/run, {args.repeats} runs each "
        f"(alternating), {torch.get_num_threads()} threads, {config.train.device}, "
        f"same initial weights: {'yes' if same_init else 'NO'}"
    )
    print(f"load avg   {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    print()
    print(
        table(
            [
                ("images/s, training (best run)", f"{trainer.rate:.1f}", f"{plain.rate:.1f}"),
                ("images/s, each run", rates(trainer_runs), rates(plain_runs)),
                (
                    "train s per epoch (best run)",
                    " ".join(f"{s:.2f}" for s in trainer.seconds),
                    " ".join(f"{s:.2f}" for s in plain.seconds),
                ),
                (
                    "wall s per epoch, with eval+ckpt",
                    " ".join(f"{s:.2f}" for s in trainer.wall),
                    " ".join(f"{s:.2f}" for s in plain.wall),
                ),
                ("images/s, whole epochs", f"{trainer.wall_rate:.1f}", f"{plain.wall_rate:.1f}"),
                ("checkpoint s per epoch", f"{ckpt:.3f}", "-"),
                ("eval + events s per epoch", f"{other:.3f}", "-"),
                ("images/s, train events (median)", window, "-"),
            ]
        )
    )
    print()
    print(f"ratio trainer / plain (training images/s): {ratio:.3f}")
    if args.json:
        print(
            json.dumps(
                {
                    "trainer_images_per_second": round(trainer.rate, 2),
                    "plain_images_per_second": round(plain.rate, 2),
                    "ratio": round(ratio, 4),
                    "trainer_wall_images_per_second": round(trainer.wall_rate, 2),
                    "trainer_runs": [round(r.rate, 2) for r in trainer_runs],
                    "plain_runs": [round(r.rate, 2) for r in plain_runs],
                    "checkpoint_seconds_per_epoch": round(ckpt, 4),
                    "eval_and_events_seconds_per_epoch": round(other, 4),
                    "images": per_epoch,
                    "test_images": len(dataset.test),
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "epochs": epochs,
                    "repeats": args.repeats,
                    "model": f"{args.model}-w{args.width}",
                    "params": params,
                    "data": data,
                    "device": config.train.device,
                    "same_initial_weights": same_init,
                    "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
                }
            )
        )


if __name__ == "__main__":
    main()
