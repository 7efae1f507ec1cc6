"""One training epoch fed by fireflytui's in-memory pipeline against torchvision's classic one.

Both feed the same images (an image-folder tree) to the same model (thin VGG-19, in the
channels-last layout the trainer uses), optimiser and batch size, in this process, so the
ratio holds on a noisy machine. Ours decodes the folder once (cached on disk), then builds
shuffled, cropped, flipped, normalised batches from one uint8 tensor; torchvision's reads and
decodes every JPEG with PIL each epoch, timed with each DataLoader worker count of `--workers`
(0 decodes in this process); the ratio is against the fastest. By default the images are 10
classes of generated shapes written as JPEGs to a temp folder; `--data-dir` reads a real tree
(DIR/train/<class>/*, DIR/test/<class>/*).

    python benchmarks/data_pipeline.py [--data-dir DIR] [--images N] [--workers 0,1,2]
                                       [--threads T] [--repeats R] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fireflytui import build_model, default_architecture
from fireflytui.data import SHAPES_CLASSES, DataError, Dataset, load_dataset, make_shapes

JPEG_QUALITY = 75  # of the generated images, as in the CIFAR-10 JPEG copy
SPOT_CHECKS = 8  # images decoded by both pipelines to confirm they read the same files
CROP_PAD = 4  # pixels of zero padding before the random 32 x 32 crop, in both pipelines


class BenchmarkError(Exception):
    """A bad option or data folder; the message is one line that says how to fix it."""


@dataclass
class Data:
    """The same training images for both pipelines, and what loading them cost."""

    ours: Dataset
    torchvision: torch.utils.data.Dataset
    label: str
    cold_load_seconds: float  # decode every image of both splits and write the cache
    cached_load_seconds: float  # read the decoded splits back from the cache
    scan_seconds: float  # ImageFolder listing the train folder


@dataclass
class Epoch:
    """One pass over the training images: how many and how long."""

    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def write_shapes_folder(root: Path, n_train: int, n_test: int, seed: int) -> None:
    """Writes generated shapes as JPEGs: root/train/<class>/NNNNN.jpg and root/test/<class>/."""
    from PIL import Image

    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        shapes = make_shapes(n, split_seed)
        for name in SHAPES_CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        pixels = shapes.images.permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x C
        for i, (image, label) in enumerate(zip(pixels, shapes.labels.tolist(), strict=True)):
            path = root / split / SHAPES_CLASSES[label] / f"{i:05d}.jpg"
            Image.fromarray(image).save(path, quality=JPEG_QUALITY)


def classic_transform(mean: tuple[float, ...], std: tuple[float, ...]):
    """torchvision's usual CIFAR training transform, normalised with our statistics."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=CROP_PAD),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def load_data(root: Path, images: int, seed: int, cache_dir: Path, label: str) -> Data:
    """Loads the folder both ways, timing our cold and cached loads, and pairs the images."""
    from torchvision.datasets import ImageFolder

    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise BenchmarkError(
            f"--data-dir {root} needs train/<class>/* and test/<class>/* folders; point it at "
            "an image-folder tree such as ~/.cache/cifar10-jpeg"
        )
    start = time.perf_counter()
    folder = ImageFolder(str(root / "train"))
    scan_seconds = time.perf_counter() - start
    available = len(folder)
    if images > available:
        raise BenchmarkError(
            f"--images {images} asked for, but {root}/train has only {available} images; "
            f"pass --images {available} or fewer"
        )
    subset = images if images < available else None

    start = time.perf_counter()
    load_dataset("imagefolder", root, seed=seed, train_subset=subset, cache_dir=cache_dir)
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = load_dataset("imagefolder", root, seed=seed, train_subset=subset, cache_dir=cache_dir)
    cached_seconds = time.perf_counter() - start

    if subset is None:
        indices = list(range(available))
    else:
        full = load_dataset("imagefolder", root, seed=seed, cache_dir=cache_dir)
        indices = locate(ours.train.images, full.train.images)
    check_same_images(ours, folder, indices)
    folder.transform = classic_transform(ours.mean, ours.std)
    chosen = folder if subset is None else torch.utils.data.Subset(folder, indices)
    return Data(ours, chosen, label, cold_seconds, cached_seconds, scan_seconds)


def locate(images: Tensor, among: Tensor) -> list[int]:
    """The index in `among` of each image of `images`, matched by exact pixels, in order."""
    weights = torch.rand(images[0].numel(), dtype=torch.float64, generator=torch.Generator())

    def keys(stack: Tensor) -> list[float]:
        flat = stack.reshape(len(stack), -1)
        return [
            k
            for i in range(0, len(flat), 4096)
            for k in (flat[i : i + 4096].double() @ weights).tolist()
        ]

    candidates: dict[float, deque[int]] = defaultdict(deque)
    for index, key in enumerate(keys(among)):
        candidates[key].append(index)
    found = []
    for image, key in zip(images, keys(images), strict=True):
        queue = candidates.get(key)
        if not queue or not torch.equal(among[queue[0]], image):
            raise BenchmarkError("the image folder changed while it was loading; run again")
        found.append(queue.popleft())
    return found


def check_same_images(ours: Dataset, folder, indices: list[int]) -> None:
    """Decodes a few files with torchvision's loader and compares them with our tensors."""
    import numpy as np

    if [folder.targets[i] for i in indices] != ours.train.labels.tolist():
        raise BenchmarkError("ImageFolder and fireflytui disagree on the labels of this folder")
    picks = torch.linspace(0, len(indices) - 1, min(SPOT_CHECKS, len(indices))).long().tolist()
    for k in picks:
        path, _ = folder.samples[indices[k]]
        theirs = torch.from_numpy(np.array(folder.loader(path))).permute(2, 0, 1)
        if theirs.shape != ours.train.images[k].shape or (
            (theirs.int() - ours.train.images[k].int()).abs().float().mean() > 1.0
        ):
            raise BenchmarkError(f"ImageFolder and fireflytui read different images at {path}")


def fresh_model(
    seed: int, layout: torch.memory_format
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Thin VGG-19 and its SGD optimiser, identical for every run from the same seed."""
    torch.manual_seed(seed)
    model = build_model(default_architecture("vgg19", num_classes=10))
    model.to(memory_format=layout)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=0.05,  # step size
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,  # L2 coefficient
    )
    return model, optimizer


def train(
    model,
    optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    steps: int | None,
    layout: torch.memory_format,
) -> Epoch:
    """Forward, backward and step on each batch (the first `steps`, or all), timed."""
    model.train()
    seen = 0
    start = time.perf_counter()
    for x, y in itertools.islice(batches, steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x.contiguous(memory_format=layout)), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return Epoch(seen, time.perf_counter() - start)


def read_only(batches: Iterable[tuple[Tensor, Tensor]]) -> Epoch:
    """One pass that only produces the batches: the pipeline's own cost, without the model."""
    seen = 0
    start = time.perf_counter()
    for _, y in batches:
        seen += len(y)
    return Epoch(seen, time.perf_counter() - start)


def run(data: Data, args: argparse.Namespace) -> dict[str, object]:
    """Warm-up and a timed epoch per pipeline and repeat, rotating which goes first.

    torchvision runs once per worker count asked for; the ratio is taken against the fastest
    of them, so the comparison is with torchvision at its best on this machine.
    """
    ours_batches = data.ours.batches(True, args.batch_size, seed=args.seed, augment=True)
    layout = torch.contiguous_format if args.contiguous else torch.channels_last

    def loader(seed: int, workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            data.torchvision,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
        )

    def epoch(pipeline: str, repeat: int) -> Epoch:
        model, optimizer = fresh_model(args.seed, layout)
        if pipeline == "ours":
            train(model, optimizer, ours_batches, args.warmup, layout)
            return train(model, optimizer, ours_batches, None, layout)
        workers = int(pipeline.removeprefix("workers="))
        warm = loader(args.seed + 10_000 + repeat, workers)
        train(model, optimizer, warm, args.warmup, layout)
        return train(model, optimizer, loader(args.seed + repeat, workers), None, layout)

    pipelines = ["ours", *(f"workers={w}" for w in args.workers)]
    load_before = os.getloadavg()[0]  # runnable processes, 1-minute mean
    best: dict[str, Epoch] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(pipelines)
        for pipeline in pipelines[shift:] + pipelines[:shift]:
            result = epoch(pipeline, repeat)
            print(
                f"repeat {repeat + 1}/{args.repeats} {pipeline:<11} {result.seconds:7.2f} s "
                f"{result.images_per_second:8.0f} images/s",
                file=sys.stderr,
            )
            if pipeline not in best or result.seconds < best[pipeline].seconds:
                best[pipeline] = result
    ours = best["ours"]
    fastest = min(pipelines[1:], key=lambda p: best[p].seconds)
    theirs = best[fastest]
    ratio = ours.images_per_second / theirs.images_per_second
    alone = read_only(ours_batches).images_per_second
    theirs_alone = read_only(loader(args.seed, int(fastest.split("=")[1]))).images_per_second
    load_after = os.getloadavg()[0]

    print(f"{'pipeline':<26}  {'epoch s':>8}  {'images/s':>9}  {'ours is':>8}")
    for pipeline in pipelines:
        result = best[pipeline]
        name = "fireflytui" if pipeline == "ours" else f"torchvision, {pipeline}"
        faster = ours.images_per_second / result.images_per_second
        print(
            f"{name:<26}  {result.seconds:8.2f}  {result.images_per_second:9,.0f}  {faster:7.2f}x"
        )
    print()
    settings = [
        ("data", data.label),
        ("training images", f"{ours.images:,}"),
        ("batch size, torch threads", f"{args.batch_size}, {torch.get_num_threads()}"),
        ("model memory layout", "NCHW" if args.contiguous else "channels-last"),
        ("repeats (best counts)", str(args.repeats)),
        ("data alone, images/s", f"ours {alone:,.0f}, torchvision {theirs_alone:,.0f}"),
        (
            "our load: first, cached",
            f"{data.cold_load_seconds:.2f} s (decode + cache), {data.cached_load_seconds:.2f} s",
        ),
        ("ImageFolder scan", f"{data.scan_seconds:.2f} s"),
        ("load average, start / end", f"{load_before:.1f} / {load_after:.1f} on {os.cpu_count()}"),
        ("ours / fastest torchvision", f"{ratio:.2f}x (against {fastest})"),
    ]
    width = max(len(k) for k, _ in settings)
    for key, value in settings:
        print(f"{key:<{width}}  {value}")
    return {
        "ours_images_per_second": round(ours.images_per_second, 1),
        "torchvision_images_per_second": round(theirs.images_per_second, 1),
        "ratio": round(ratio, 3),
        "torchvision_workers": int(fastest.split("=")[1]),
        "ratio_by_workers": {
            p.split("=")[1]: round(ours.images_per_second / best[p].images_per_second, 3)
            for p in pipelines[1:]
        },
        "ours_epoch_seconds": round(ours.seconds, 3),
        "torchvision_epoch_seconds": round(theirs.seconds, 3),
        "ours_data_images_per_second": round(alone, 1),
        "torchvision_data_images_per_second": round(theirs_alone, 1),
        "ours_load_cold_seconds": round(data.cold_load_seconds, 3),
        "ours_load_cached_seconds": round(data.cached_load_seconds, 3),
        "images": ours.images,
        "batch_size": args.batch_size,
        "channels_last": not args.contiguous,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "load_average_start": round(load_before, 2),
        "load_average_end": round(load_after, 2),
        "data": data.label if args.data_dir else "synthetic",
    }


def worker_counts(text: str) -> list[int]:
    """`0,2` -> [0, 2]: the DataLoader worker counts torchvision is timed with."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 0,2, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"worker counts must be 0 or more, got {text!r}")
    return sorted(set(counts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="image-folder tree: DIR/train/<class>/*, DIR/test/")
    parser.add_argument("--images", type=int, default=10_000, help="training images")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=[0, 1, 2],
        help="DataLoader worker counts to try, comma-separated (default 0,1,2)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per pipeline")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each epoch")
    parser.add_argument("--seed", type=int, default=0, help="model, subset and shuffle seed")
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="run the model in NCHW layout (default: channels-last, as the trainer does)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    for name, low in (
        ("images", 1),
        ("batch_size", 1),
        ("threads", 1),
        ("repeats", 1),
        ("warmup", 0),
    ):
        value = getattr(args, name)
        if value < low:
            flag = "--" + name.replace("_", "-")
            raise BenchmarkError(f"{flag} must be at least {low}, got {value}")
    return args


def main(argv: list[str] | None = None) -> None:
    try:
        args = parse_args(argv)
        torch.set_num_threads(args.threads)
        # Tiny gradients of a well-fitted network become denormal floats, which CPUs process
        # many times slower; flushing them to zero changes no result that matters here.
        torch.set_flush_denormal(True)
        with tempfile.TemporaryDirectory(prefix="fireflytui-bench-") as tmp:
            cache_dir = Path(tmp) / "cache"
            if args.data_dir:
                root = Path(args.data_dir).expanduser()
                data = load_data(root, args.images, args.seed, cache_dir, str(root))
            else:
                root = Path(tmp) / "shapes"
                write_shapes_folder(root, args.images, max(10, args.images // 5), args.seed)
                label = f"synthetic shapes, JPEG q{JPEG_QUALITY}, generated in a temp folder"
                data = load_data(root, args.images, args.seed, cache_dir, label)
            summary = run(data, args)
    except (BenchmarkError, DataError) as e:
        sys.exit(f"data_pipeline: error: {e}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
