"""In-memory datasets as uint8 tensors, and shuffled, augmented batches made on the device.

Every split lives in memory as one uint8 tensor (N x C x H x W), so an epoch never touches
the disk or PIL: `Batches` moves the split to the device once, then builds each batch with
one gather (shuffle and random crop together), one slice flip and one normalisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

SOURCES = ("shapes", "imagefolder", "cifar10", "cifar100", "mnist")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "fireflytui"
DEFAULT_DATA_DIR = DEFAULT_CACHE_DIR / "data"

SHAPES_TRAIN_SIZE = 5_000
SHAPES_TEST_SIZE = 1_000
SHAPES_IMAGE_SIZE = 32  # pixels, square
SHAPES_CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_bar",
    "vertical_bar",
    "diamond",
    "two_dots",
    "x",
)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
_CACHE_VERSION = "1"
_TORCHVISION_IO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"
_DOWNLOAD_TIMEOUT_S = 30.0
_DOWNLOAD_HINT = {
    "cifar10": "cifar-10-batches-py/",
    "cifar100": "cifar-100-python/",
    "mnist": "MNIST/raw/",
}


class DataError(Exception):
    """A data problem the user can fix; the message is one line that says how."""


@dataclass(eq=False)
class DataSplit:
    """One split held in memory: images N x C x H x W uint8, labels N int64."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def class_counts(self) -> Tensor:
        """Images per class, int64 of length len(classes)."""
        return torch.bincount(self.labels, minlength=len(self.classes))

    def subset(self, n: int, seed: int = 0) -> DataSplit:
        """A stratified random subset of n images: every class keeps its share, to within one."""
        return stratified_subset(self, n, seed=seed)


@dataclass(eq=False)
class Dataset:
    """A train and a test split with the per-channel statistics that normalise them."""

    name: str
    train: DataSplit
    test: DataSplit
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]  # per channel, on the 0..1 scale
    source: str = ""
    location: str = ""  # the directory the images came from, "" when generated

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.train.images.shape
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def batches(
        self,
        train: bool,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
        augment: bool = True,
        drop_last: bool = False,
    ) -> Batches:
        """Batches of the train split (shuffled, augmented) or of the test split (in order)."""
        return Batches(
            self.train if train else self.test,
            batch_size,
            device=device,
            mean=self.mean,
            std=self.std,
            train=train,
            seed=seed,
            augment=augment,
            drop_last=drop_last,
        )


def load_dataset(
    source: str,
    dir: str | Path | None = None,
    *,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Loads `source` into memory and takes stratified subsets when asked.

    Sources: `shapes` (generated, 5,000 train and 1,000 test images, no dir), `imagefolder`
    (dir/train/<class>/* and dir/test/<class>/*, decoded once and cached as safetensors under
    `cache_dir`, default ~/.cache/fireflytui), and `cifar10`, `cifar100`, `mnist` (torchvision,
    downloaded into dir, default DEFAULT_DATA_DIR).
    """
    key = source.strip().lower()
    if key == "shapes":
        train = make_shapes(SHAPES_TRAIN_SIZE, _derive_seed(seed, "shapes/train"))
        test = make_shapes(SHAPES_TEST_SIZE, _derive_seed(seed, "shapes/test"))
        name, location = "shapes", ""
    elif key == "imagefolder":
        if dir is None:
            raise DataError(
                "the imagefolder source needs a directory holding train/<class>/* and "
                "test/<class>/*: --set data.dir=PATH"
            )
        root = Path(dir).expanduser()
        cache = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
        train, test = _load_imagefolder(root, cache / "imagefolder")
        name, location = root.resolve().name or "imagefolder", str(root)
    elif key in ("cifar10", "cifar100", "mnist"):
        root = Path(dir).expanduser() if dir is not None else DEFAULT_DATA_DIR
        train, test = _load_torchvision(key, root)
        name, location = key, str(root)
    else:
        raise DataError(f"unknown data source {source!r}; known sources: {', '.join(SOURCES)}")

    if train_subset is not None:
        train = _subset_or_error(train, train_subset, _derive_seed(seed, "subset/train"), "train")
    if test_subset is not None:
        test = _subset_or_error(test, test_subset, _derive_seed(seed, "subset/test"), "test")
    mean, std = channel_stats(train.images)
    return Dataset(name, train, test, mean, std, source=key, location=location)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std on the 0..1 scale, from a 256-bin histogram per channel."""
    levels = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum().clamp_min(1.0)
        mean = (hist * levels).sum() / total
        var = (hist * (levels - mean) ** 2).sum() / total
        means.append(float(mean) / 255.0)
        stds.append(max(float(var.sqrt()) / 255.0, 1e-3))
    return tuple(means), tuple(stds)


def stratified_subset(split: DataSplit, n: int, seed: int = 0) -> DataSplit:
    """n images drawn at random (from seed) so that every class keeps its share, to within one.

    Quotas use the largest-remainder rule, so they sum to exactly n; the kept images stay in
    their original order.
    """
    total = len(split)
    if not 0 < n <= total:
        raise ValueError(f"subset size must be in 1..{total}, got {n}")
    counts = split.class_counts()
    exact = counts.to(torch.float64) * n / total
    quota = exact.floor().to(torch.int64)
    short = n - int(quota.sum())
    if short:
        by_remainder = torch.argsort(exact - quota, descending=True, stable=True)
        quota[by_remainder[:short]] += 1
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(total, generator=g)
    grouped = order[torch.argsort(split.labels[order], stable=True)]  # by class, random within
    labels = split.labels[grouped]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(total) - starts[labels]  # position within the class
    kept = grouped[rank < quota[labels]].sort().values
    return DataSplit(split.images[kept], split.labels[kept], list(split.classes))


def _subset_or_error(split: DataSplit, n: int, seed: int, name: str) -> DataSplit:
    if n > len(split):
        raise DataError(
            f"{name} subset of {n} images asked for, but the {name} split has only {len(split)}"
        )
    if n < 1:
        raise DataError(f"{name} subset must be at least 1 image, got {n}")
    return stratified_subset(split, n, seed=seed)


def _derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, so streams for different purposes never coincide."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# Procedural shapes ----------------------------------------------------------------------------


def make_shapes(n: int, seed: int, *, size: int = SHAPES_IMAGE_SIZE) -> DataSplit:
    """n images (3 x size x size) of 10 shape classes on noisy, shaded backgrounds.

    Labels are balanced (n // 10 per class, the first n % 10 classes get one more); position,
    size, aspect, colours, shading and noise are jittered; the result depends only on n, seed
    and size.
    """
    g = torch.Generator().manual_seed(seed)
    k = len(SHAPES_CLASSES)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    radius = uniform(0.22, 0.36, n) * size  # pixels
    aspect = uniform(0.85, 1.15, n)
    rx, ry = radius * aspect.sqrt(), radius / aspect.sqrt()
    cx = rx + torch.rand(n, generator=g) * (size - 2 * rx)  # pixels, shape inside the image
    cy = ry + torch.rand(n, generator=g) * (size - 2 * ry)
    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    u = (coords.view(1, 1, size) - cx.view(n, 1, 1)) / rx.view(n, 1, 1)  # n x 1 x S
    v = (coords.view(1, size, 1) - cy.view(n, 1, 1)) / ry.view(n, 1, 1)  # n x S x 1

    # Each image is bg + (fg - bg) * mask + shading + noise per channel: one batched matmul of
    # per-image colour weights (n x 3 x 3) with three fields (n x 3 x S*S).
    fields = torch.empty(n, 3, size, size)
    for c in range(k):
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx):
            fields[idx, 0] = _shape_mask(c, u[idx], v[idx]).float()
    slope_x, slope_y = uniform(-1.0, 1.0, 2, n, 1, 1)  # shading, in units of its full swing
    ramp = coords / size - 0.5  # -0.5..0.5 across the image
    fields[:, 1] = slope_x * ramp.view(1, 1, size) + slope_y * ramp.view(1, size, 1)
    fields[:, 2] = _noise_fields(n, size, g)  # unit Gaussian noise
    dark = torch.rand(n, 1, generator=g) < 0.5  # dark background, light shape, or the reverse
    bg = torch.where(dark, uniform(0.0, 100.0, n, 3), uniform(155.0, 255.0, n, 3))  # levels
    fg = torch.where(dark, uniform(155.0, 255.0, n, 3), uniform(0.0, 100.0, n, 3))
    weights = torch.stack(
        [fg - bg, uniform(20.0, 50.0, n, 1).expand(n, 3), uniform(10.0, 25.0, n, 1).expand(n, 3)],
        dim=2,
    )  # n x 3 x 3: shape contrast, shading swing and noise std, in levels
    images = torch.baddbmm((bg + 0.5).unsqueeze(2), weights, fields.view(n, 3, size * size))
    images = images.clamp_(0.0, 255.0).to(torch.uint8).view(n, 3, size, size)  # +0.5: rounds
    return DataSplit(images, labels, list(SHAPES_CLASSES))


def _noise_fields(n: int, size: int, g: torch.Generator) -> Tensor:
    """n unit-Gaussian size x size fields, cut at random from a small bank: n x size x size.

    A 64-field bank of 4 x size square fields with random offsets gives about 600,000 distinct
    fields for a sixteenth of the random draws of fresh noise.
    """
    side = 4 * size
    bank = torch.randn(64, 1, side, side, generator=g)  # 64 x 1 x 4S x 4S
    offsets = (
        torch.randint(0, 64, (n,), generator=g) * side * side
        + torch.randint(0, side - size + 1, (n,), generator=g) * side
        + torch.randint(0, side - size + 1, (n,), generator=g)
    )
    return _windows(bank, (1, size, size)).index_select(0, offsets).view(n, size, size)


def _shape_mask(label: int, u: Tensor, v: Tensor) -> Tensor:
    """Pixels inside shape `label`, in coordinates scaled so the shape spans about -1..1."""
    au, av = u.abs(), v.abs()
    r2 = u * u + v * v
    if label == 0:  # circle
        return r2 <= 1.0
    if label == 1:  # square
        return (au <= 0.8) & (av <= 0.8)
    if label == 2:  # triangle, apex up
        return (v >= -0.85) & (v <= 0.85) & (au <= 0.95 * (v + 0.85) / 1.7)
    if label == 3:  # upright cross
        return ((au <= 0.25) & (av <= 0.95)) | ((av <= 0.25) & (au <= 0.95))
    if label == 4:  # ring
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if label == 5:  # horizontal bar
        return (au <= 1.0) & (av <= 0.3)
    if label == 6:  # vertical bar
        return (au <= 0.3) & (av <= 1.0)
    if label == 7:  # diamond
        return au + av <= 1.0
    if label == 8:  # two dots side by side
        return ((u - 0.55) ** 2 + v * v <= 0.4**2) | ((u + 0.55) ** 2 + v * v <= 0.4**2)
    if label == 9:  # diagonal cross
        return (((u - v).abs() <= 0.35) | ((u + v).abs() <= 0.35)) & (au <= 0.9) & (av <= 0.9)
    raise ValueError(f"no shape {label}")


# Image folders ------------------------------------------------------------------------------


def _load_imagefolder(root: Path, cache_dir: Path) -> tuple[DataSplit, DataSplit]:
    """Both splits of an image-folder tree, from the safetensors cache when it is current."""
    if not (root / "train").is_dir():
        where = "does not exist" if not root.exists() else "has no train/ folder"
        raise DataError(
            f"image folder {root} {where}; expected {root}/train/<class>/* and "
            f"{root}/test/<class>/* (set data.dir to such a folder)"
        )
    if not (root / "test").is_dir():
        raise DataError(
            f"image folder {root} has no test/ folder; expected "
            f"{root}/test/<class>/* beside {root}/train/<class>/*"
        )
    classes, train_files = _list_split(root, "train", None)
    _, test_files = _list_split(root, "test", classes)
    if not train_files:
        raise DataError(
            f"no images in {root}/train/<class>/ (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if not test_files:
        raise DataError(f"no images in {root}/test/<class>/")
    fingerprint = _fingerprint(root, classes, train_files + test_files)
    cache_file = cache_dir / f"{_slug(root)}.safetensors"

    cached = _read_cache(cache_file, fingerprint)
    if cached is not None:
        log.info("image folder %s: loaded from cache %s", root, cache_file)
        return cached
    train, test = _decode_split(train_files, classes), _decode_split(test_files, classes)
    _check_same_size(train, test, train_files, test_files)
    if _all_gray(train.images) and _all_gray(test.images):
        train.images = train.images[:, :1].contiguous()
        test.images = test.images[:, :1].contiguous()
    _write_cache(cache_file, fingerprint, root, train, test)
    return train, test


class _ImageFile(NamedTuple):
    """One image of an image-folder tree, with what the cache fingerprint needs."""

    path: str
    name: str  # relative to the image folder, e.g. "train/cat/0001.jpg"
    label: int
    size: int  # bytes
    mtime_ns: int


def _list_split(
    root: Path, split: str, classes: list[str] | None
) -> tuple[list[str], list[_ImageFile]]:
    """Class names (sorted folder names, or those of train/) and every image file in a split."""
    base = root / split
    found = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"{base} has no class folders; expected {base}/<class>/*")
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{base} has classes that train/ lacks: {', '.join(unknown)}")
    files = []
    for label, name in enumerate(classes):
        folder = base / name
        if not folder.is_dir():
            continue
        entries = sorted(
            (e for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()),
            key=lambda e: e.name,
        )
        for e in entries:
            if e.name[e.name.rfind(".") :].lower() in IMAGE_SUFFIXES:
                st = e.stat()
                rel = f"{split}/{name}/{e.name}"
                files.append(_ImageFile(e.path, rel, label, st.st_size, st.st_mtime_ns))
    return classes, files


def _fingerprint(root: Path, classes: list[str], files: list[_ImageFile]) -> str:
    """A digest of the folder's path, classes and every file's name, size and mtime."""
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}\n{root.resolve()}\n{json.dumps(classes)}\n".encode())
    h.update("".join(f"{f.name}\t{f.label}\t{f.size}\t{f.mtime_ns}\n" for f in files).encode())
    return h.hexdigest()


def _slug(root: Path) -> str:
    """A cache file name unique to the folder's resolved path, readable by its last part."""
    resolved = str(root.resolve())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).name)[:40] or "root"
    return f"{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:16]}"


def _decode_split(files: list[_ImageFile], classes: list[str]) -> DataSplit:
    """Decodes every file to RGB in parallel chunks and stacks them: N x 3 x H x W uint8."""
    paths = [f.path for f in files]
    chunk = 512  # files per task
    workers = max(1, min(8, os.cpu_count() or 1))
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        # torchvision 0.29 deprecates its decoders in favour of torchcodec, once per call
        warnings.filterwarnings("ignore", _TORCHVISION_IO_DEPRECATION, DeprecationWarning)
        parts = pool.map(_decode_files, (paths[i : i + chunk] for i in range(0, len(paths), chunk)))
        decoded = [img for part in parts for img in part]
    first = decoded[0].shape
    for path, img in zip(paths, decoded, strict=True):
        if img.shape != first:
            raise DataError(
                f"{path} is {_size(img)} but {paths[0]} is {_size(decoded[0])}; "
                "all images must have the same size"
            )
    labels = torch.tensor([f.label for f in files], dtype=torch.int64)
    return DataSplit(torch.stack(decoded), labels, list(classes))


def _decode_files(paths: list[str]) -> list[Tensor]:
    """3 x H x W uint8 per file: JPEGs in one batched torchvision call, the rest one by one.

    Falls back to PIL for formats torchvision cannot read, and for everything when a
    torchvision release no longer has its image decoders.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:
        return [_decode_pil(path) for path in paths]

    raw = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                content = bytearray(f.read())
        except OSError as e:
            raise DataError(f"cannot read {path}: {_one_line(e)}") from None
        if not content:
            raise DataError(f"{path} is empty")
        raw.append(torch.frombuffer(content, dtype=torch.uint8))
    out: list[Tensor | None] = [None] * len(paths)
    jpegs = [i for i, data in enumerate(raw) if data[:3].tolist() == [0xFF, 0xD8, 0xFF]]
    if jpegs:
        try:
            batch = decode_jpeg([raw[i] for i in jpegs], mode=ImageReadMode.RGB)
            for i, img in zip(jpegs, batch, strict=True):
                out[i] = img
        except RuntimeError:
            pass  # a broken file in the batch: decode one by one below to name it
    for i, path in enumerate(paths):
        if out[i] is None:
            try:
                out[i] = decode_image(raw[i], mode=ImageReadMode.RGB)
            except RuntimeError:
                out[i] = _decode_pil(path)
    return out  # type: ignore[return-value]


def _decode_pil(path: str) -> Tensor:
    """Decodes what torchvision cannot (BMP, TIFF, PPM) with PIL: 3 x H x W uint8."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for a bad file
        raise DataError(f"cannot decode {path}: {_one_line(e)}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _size(img: Tensor) -> str:
    return f"{img.shape[-1]}x{img.shape[-2]} pixels"


def _check_same_size(
    train: DataSplit, test: DataSplit, train_files: list[_ImageFile], test_files: list[_ImageFile]
) -> None:
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{test_files[0].path} is {_size(test.images[0])} but "
            f"{train_files[0].path} is {_size(train.images[0])}; all images must have "
            "the same size"
        )


def _all_gray(images: Tensor) -> bool:
    """True when every pixel has R == G == B, so one channel carries everything."""
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())


def _read_cache(path: Path, fingerprint: str) -> tuple[DataSplit, DataSplit] | None:
    """Both splits from the cache file, or None when it is missing, stale or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != fingerprint:
                return None
            classes = json.loads(meta["classes"])
            splits = tuple(
                DataSplit(f.get_tensor(f"{s}_images"), f.get_tensor(f"{s}_labels"), classes)
                for s in ("train", "test")
            )
    except Exception as e:  # a truncated or foreign file: decode again and overwrite it
        log.warning("ignoring unreadable cache %s: %s", path, _one_line(e))
        return None
    return splits  # type: ignore[return-value]


def _write_cache(path: Path, fingerprint: str, root: Path, train: DataSplit, test: DataSplit):
    """Writes the decoded splits through a temp file and a rename, so readers never see half."""
    from safetensors.torch import save_file

    tensors = {
        "train_images": train.images.contiguous(),
        "train_labels": train.labels.contiguous(),
        "test_images": test.images.contiguous(),
        "test_labels": test.labels.contiguous(),
    }
    meta = {
        "fingerprint": fingerprint,
        "classes": json.dumps(train.classes),
        "root": str(root.resolve()),
        "version": _CACHE_VERSION,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        log.info("image folder %s: cached decoded images in %s", root, path)
    except OSError as e:  # an unwritable cache only costs the next load a decode
        log.warning("could not write cache %s: %s", path, _one_line(e))
        tmp.unlink(missing_ok=True)


# torchvision datasets -------------------------------------------------------------------------


def _load_torchvision(name: str, root: Path) -> tuple[DataSplit, DataSplit]:
    """CIFAR-10, CIFAR-100 or MNIST from root, downloading them there when they are missing."""
    from urllib.error import URLError

    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "mnist": datasets.MNIST}
    splits = []
    for train in (True, False):
        try:
            with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
                ds = cls[name](root=str(root), train=train, download=True)
        except (URLError, OSError, RuntimeError, ValueError) as e:
            raise DataError(
                f"{name} is not in {root} and downloading it failed ({_one_line(e, 100)}); "
                f"put a copy there ({_DOWNLOAD_HINT[name]}) or point at one with "
                "--set data.dir=PATH, or use an image-folder copy with "
                "--set data.source=imagefolder --set data.dir=PATH"
            ) from None
        data = torch.as_tensor(ds.data)
        if data.dim() == 3:  # MNIST: N x H x W
            images = data.unsqueeze(1)
        else:  # CIFAR: N x H x W x C
            images = data.permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        splits.append(DataSplit(images.contiguous(), labels, list(ds.classes)))
    return splits[0], splits[1]


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bounds each network read so a silent firewall fails the download instead of hanging."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)


def _one_line(error: BaseException | str, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Batches on the device ------------------------------------------------------------------------


def _windows(padded: Tensor, shape: Sequence[int]) -> Tensor:
    """A view (L x C x H x W) of every C x H x W window of a contiguous padded stack.

    Row j is the window whose first element sits at flat offset j, so picking image i shifted
    to padded position (r, c) is one index_select of offset i*C*Hp*Wp + r*Wp + c: shuffling and
    cropping a batch become a single gather.
    """
    c, h, w = shape
    _, _, hp, wp = padded.shape
    flat = padded.reshape(-1)
    extent = (c - 1) * hp * wp + (h - 1) * wp + (w - 1)  # elements one window spans, minus one
    return flat.as_strided((flat.numel() - extent, c, h, w), (1, hp * wp, wp, 1))


def crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, *, pad: int = 4) -> Tensor:
    """Shifts image i by (dy[i], dx[i]) pixels with zero fill, then mirrors it if flip[i].

    out[i, :, r, c] = images[i, :, r + dy, c + dx] (0 outside), with |dy|, |dx| <= pad; this is
    the crop of the zero-padded image at offset (dy + pad, dx + pad). Shapes are kept (B x C x
    H x W), as is the dtype. Batches uses the same window gather.
    """
    if images.shape[0] == 0:
        return images.clone()
    if int(dy.abs().max()) > pad or int(dx.abs().max()) > pad:
        raise ValueError(f"shifts must be within +-{pad} pixels")
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)).contiguous()  # B x C x H+2p x W+2p
    hp, wp = h + 2 * pad, w + 2 * pad
    device = images.device
    offsets = (
        torch.arange(b, device=device) * (c * hp * wp)
        + (dy.to(device) + pad) * wp
        + (dx.to(device) + pad)
    )
    out = _windows(padded, (c, h, w)).index_select(0, offsets)  # B x C x H x W
    mirrored = flip.to(device).nonzero().squeeze(1)
    out.index_copy_(0, mirrored, out.index_select(0, mirrored).flip(3))
    return out


class Batches:
    """Iterates (x, y) batches of a split on `device`: x float32 normalised B x C x H x W, y int64.

    The split is copied to the device once as uint8. Training batches are reshuffled every
    epoch from a CPU torch.Generator and, with `augment`, randomly cropped (zero padding of
    `pad` pixels) and flipped left-right, all batch-wise on the device; the random draws for an
    epoch are made on the CPU at its start, so the result does not depend on the device.
    Test batches come in order, unaugmented. `state_dict()` / `load_state_dict()` save and
    restore the generator and the position within the epoch, so a resumed run continues with
    exactly the batches it would have seen.
    """

    def __init__(
        self,
        split: DataSplit,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int = 0,
        generator: torch.Generator | None = None,
        augment: bool = True,
        drop_last: bool = False,
        pad: int = 4,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        _, c, h, w = split.images.shape
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean and std need {c} values, got {len(mean)} and {len(std)}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.train = train
        self.augment = train and augment
        self.drop_last = drop_last
        self.pad = pad if self.augment else 0
        self.shape = (c, h, w)
        self.num_samples = len(split)
        self.epoch = 0  # epochs started so far
        self.generator = generator if generator is not None else torch.Generator()
        if generator is None:
            self.generator.manual_seed(seed)

        images = split.images.to(self.device)
        if self.pad:
            images = F.pad(images, (self.pad,) * 4)  # N x C x H+2p x W+2p
        self._images = images.contiguous()
        self._labels = split.labels.to(self.device)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)  # uint8 level -> normalised units
        self._shift = -mean_t / std_t
        self._epoch_start: Tensor | None = None  # generator state when this epoch began
        self._position = 0  # batches of the current epoch already yielded
        self._resume: tuple[Tensor, int] | None = None  # set by load_state_dict

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.train:
            yield from self._in_order()
            return
        if self._resume is not None:
            state, start = self._resume
            self._resume = None
            self.generator.set_state(state)
        else:
            start = 0
        epoch_start = self.generator.get_state()
        offsets, order, flips = self._plan_epoch()
        self.epoch += 1
        self._epoch_start, self._position = epoch_start, start
        windows = _windows(self._images, self.shape)
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.num_samples)
            x = windows.index_select(0, offsets[lo:hi])  # B x C x H x W uint8
            if flips[i]:
                x[: flips[i]] = x[: flips[i]].flip(3)
            y = self._labels.index_select(0, order[lo:hi])
            self._position = i + 1
            yield self._normalise(x), y
        self._epoch_start, self._position = None, 0

    def _in_order(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.num_samples)
            yield self._normalise(self._images[lo:hi]), self._labels[lo:hi]

    def _plan_epoch(self) -> tuple[Tensor, Tensor, list[int]]:
        """Draws an epoch's order, shifts and flips: window offsets, order, flips per batch.

        Flipped samples go to the front of their batch so that one slice flips them; order
        within a batch carries no meaning, so this is the same as a coin per sample.
        """
        n, c, (hp, wp) = self.num_samples, self.shape[0], self._images.shape[2:]
        g = self.generator
        order = torch.randperm(n, generator=g)
        offsets = order * (c * hp * wp)
        counts = [0] * len(self)
        if self.augment:
            rows = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)  # padded-frame offsets
            cols = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            flip = torch.rand(n, generator=g) < 0.5
            batch = torch.arange(n) // self.batch_size
            front = torch.argsort(batch * 2 + (~flip).to(torch.int64), stable=True)
            order, flip = order[front], flip[front]
            offsets = offsets[front] + rows[front] * wp + cols[front]
            counts = torch.bincount(batch[flip], minlength=math.ceil(n / self.batch_size))
            counts = counts.tolist()
        return offsets.to(self.device), order.to(self.device), counts

    def _normalise(self, x: Tensor) -> Tensor:
        return x.float().mul_(self._scale).add_(self._shift)

    def state_dict(self) -> dict[str, Any]:
        """Generator state and position to resume from: mid-epoch if stopped inside one."""
        if self._resume is not None:
            state, position = self._resume
        elif self._epoch_start is not None and 0 < self._position < len(self):
            state, position = self._epoch_start, self._position
        else:
            state, position = self.generator.get_state(), 0
        return {"generator": state.clone(), "position": position, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Makes the next iteration continue where the saved one stopped."""
        self.epoch = int(state.get("epoch", 0))
        position = int(state.get("position", 0))
        generator_state = state["generator"]
        if position:
            self.epoch = max(0, self.epoch - 1)  # the resumed epoch is counted again on start
            self._resume = (generator_state, position)
        else:
            self.generator.set_state(generator_state)
            self._resume = None
        self._epoch_start, self._position = None, 0
