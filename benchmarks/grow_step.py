"""Cost of one Firefly grow step against one training epoch, on thin VGG-19 and CIFAR-10.

Trains VGG-19 (16 channels per layer, the paper's start) for one epoch on 50,000
CIFAR-shaped images (synthetic by default; `--data-dir` reads real ones in image-folder
layout), then runs one grow step with the default settings and the paper's budget
(35% of the current neurons). Both are timed in this process, so the ratio holds on a
noisy machine.

    python benchmarks/grow_step.py [--images N] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from fireflytui import GrowthConfig, build_model, default_architecture, grow_step


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class templates plus noise as uint8 images: CIFAR's shape, learnable, no download."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(10, 3, 8, 8, generator=g)
    templates = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, 10_000):
        y = labels[start : start + 10_000]
        noisy = templates[y] + 0.8 * torch.randn(len(y), 3, 32, 32, generator=g)
        images[start : start + 10_000] = (noisy.clamp(0, 1) * 255).to(torch.uint8)
    return images, labels


def real_cifar(data_dir: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fireflytui.data import load_dataset

    dataset = load_dataset("imagefolder", data_dir, train_subset=n if n < 50_000 else None)
    return dataset.train.images, dataset.train.labels


def batches(images, labels, batch_size: int, generator: torch.Generator):
    """Shuffled, normalised float batches; the data pipeline is not what is measured."""
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        x = images[index].float().div_(255).sub_(0.5).div_(0.25)
        yield x, labels[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="training images")
    parser.add_argument("--data-dir", help="CIFAR-10 in image-folder layout (train/<class>/)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.35, help="eta_t, fraction of neurons")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Tiny gradients of a well-fitted network become denormal floats, which CPUs process
    # many times slower; flushing them to zero changes no result that matters here.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    if args.data_dir:
        images, labels = real_cifar(args.data_dir, args.images)
        source = f"CIFAR-10 from {args.data_dir}"
    else:
        images, labels = synthetic_cifar(args.images)
        source = "synthetic CIFAR-shaped"
    model = build_model(default_architecture("vgg19", num_classes=10))
    model.to(memory_format=torch.channels_last)  # as the trainer runs it (train.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    generator = torch.Generator().manual_seed(0)

    model.train()
    start = time.perf_counter()
    seen = 0
    for x, y in batches(images, labels, args.batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
    epoch_seconds = time.perf_counter() - start

    config = GrowthConfig()
    eta = math.ceil(args.ratio * sum(model.widths()))
    sample = batches(images, labels, args.batch_size, generator)
    params_before = model.num_params()
    start = time.perf_counter()
    result = grow_step(model, sample, eta, config, optimizer=optimizer, seed=0)
    grow_seconds = time.perf_counter() - start
    report = result.report

    rows = [
        ("data", source),
        ("images per epoch", f"{seen:,}"),
        ("torch threads", str(torch.get_num_threads())),
        ("epoch seconds", f"{epoch_seconds:.2f}"),
        ("grow step seconds", f"{grow_seconds:.2f}"),
        ("grow / epoch", f"{grow_seconds / epoch_seconds:.3f}"),
        ("eta_t (neurons)", f"{report.eta}"),
        ("grow-step images", f"{config.batches * args.batch_size:,} (+1 held batch)"),
        ("params before", f"{params_before:,}"),
        ("params after", f"{report.params_after:,}"),
        ("widths after", " ".join(str(u.width_after) for u in report.units)),
        ("loss change predicted", f"{report.predicted_loss_change:+.4f}"),
        ("loss change measured", f"{report.measured_loss_change:+.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'quantity':<{width}}  value")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(
            json.dumps(
                {
                    "grow_seconds": round(grow_seconds, 3),
                    "epoch_seconds": round(epoch_seconds, 3),
                    "ratio": round(grow_seconds / epoch_seconds, 4),
                    "params_before": params_before,
                    "params_after": report.params_after,
                    "eta": report.eta,
                    "images": seen,
                    "threads": torch.get_num_threads(),
                    "predicted_loss_change": report.predicted_loss_change,
                    "measured_loss_change": report.measured_loss_change,
                }
            )
        )


if __name__ == "__main__":
    main()
