"""Datasets, stratified subsets, the image-folder cache and on-device batch augmentation."""

from __future__ import annotations

import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as cifar
from PIL import Image

from fireflytui import data
from fireflytui.data import (
    Batches,
    DataError,
    DataSplit,
    crop_flip,
    load_dataset,
    make_shapes,
    stratified_subset,
)


@pytest.fixture(scope="module")
def shapes() -> data.Dataset:
    return load_dataset("shapes", None, seed=0)


def ids_split(n: int = 40, shape=(3, 8, 8), seed: int = 0) -> DataSplit:
    """Random images whose labels are their own indices, so a batch says where it came from."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return DataSplit(images, torch.arange(n), [str(i) for i in range(n)])


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


# shapes ---------------------------------------------------------------------------------------


def test_shapes_defaults(shapes):
    assert shapes.name == "shapes"
    assert shapes.input_shape == (3, 32, 32)
    assert shapes.num_classes == 10 and len(set(shapes.classes)) == 10
    assert shapes.train.images.shape == (data.SHAPES_TRAIN_SIZE, 3, 32, 32)
    assert shapes.test.images.shape == (data.SHAPES_TEST_SIZE, 3, 32, 32)
    assert shapes.train.images.dtype == torch.uint8 and shapes.train.labels.dtype == torch.int64
    assert shapes.train.class_counts().tolist() == [data.SHAPES_TRAIN_SIZE // 10] * 10
    assert shapes.test.class_counts().tolist() == [data.SHAPES_TEST_SIZE // 10] * 10
    assert len(shapes.mean) == len(shapes.std) == 3
    assert all(0.2 < m < 0.8 for m in shapes.mean) and all(0.1 < s < 0.5 for s in shapes.std)
    # the images use the whole range and are not constant
    assert shapes.train.images.min() < 20 and shapes.train.images.max() > 235


def test_shapes_deterministic_from_seed():
    a, b, c = make_shapes(200, seed=3), make_shapes(200, seed=3), make_shapes(200, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.class_counts().tolist() == [20] * 10


def test_shapes_seed_changes_dataset(shapes):
    other = load_dataset("shapes", seed=1)
    assert not torch.equal(other.train.images, shapes.train.images)
    assert not torch.equal(other.test.images, shapes.test.images)
    again = load_dataset("shapes", seed=0)
    assert torch.equal(again.train.images, shapes.train.images)
    assert torch.equal(again.test.labels, shapes.test.labels)


def test_shape_classes_differ_on_average(shapes):
    """Class-mean foreground masks differ, so the label is in the pixels, not only the seed."""
    gray = shapes.train.images.float().mean(1)  # N x H x W
    centred = (gray - gray.mean((1, 2), keepdim=True)).abs()
    means = torch.stack([centred[shapes.train.labels == c].mean(0) for c in range(10)])
    distances = torch.cdist(means.flatten(1), means.flatten(1))
    assert distances[~torch.eye(10, dtype=torch.bool)].min() > 1.0


# subsets --------------------------------------------------------------------------------------


def test_subset_keeps_class_balance(shapes):
    sub = load_dataset("shapes", seed=0, train_subset=1000, test_subset=200)
    assert sub.train.class_counts().tolist() == [100] * 10
    assert sub.test.class_counts().tolist() == [20] * 10
    assert sub.num_classes == 10 and sub.input_shape == (3, 32, 32)


def test_stratified_subset_unbalanced_and_deterministic():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    split = DataSplit(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), labels, list("abc"))
    sub = stratified_subset(split, 10, seed=0)
    assert sub.class_counts().tolist() == [5, 3, 2]
    kept = sub.images.flatten().long()
    assert len(set(kept.tolist())) == 10 and torch.equal(labels[kept], sub.labels)
    assert torch.equal(stratified_subset(split, 10, seed=0).images, sub.images)
    others = {
        tuple(stratified_subset(split, 10, seed=s).images.flatten().tolist()) for s in range(5)
    }
    assert len(others) > 1
    # quotas sum to n by largest remainder: 7 of (50, 30, 20) -> (3.5, 2.1, 1.4) -> (4, 2, 1)
    assert stratified_subset(split, 7, seed=1).class_counts().tolist() == [4, 2, 1]


def test_subset_larger_than_split_is_an_error():
    with pytest.raises(DataError, match="only 1000"):
        load_dataset("shapes", train_subset=100, test_subset=5000)


# image folders --------------------------------------------------------------------------------


def write_tree(root: Path, size=(12, 10), gray: bool = False) -> dict[str, np.ndarray]:
    """train/ and test/ with 3 classes of small PNG and JPEG images; returns PNG pixels by path."""
    rng = np.random.default_rng(0)
    pixels = {}
    for split, per_class in (("train", 4), ("test", 2)):
        for cls in ("cat", "ant", "bee"):  # sorted: ant, bee, cat
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                suffix = ".png" if i % 2 == 0 else ".jpg"
                path = folder / f"{i:04d}{suffix}"
                Image.fromarray(array).save(path)
                if suffix == ".png":
                    pixels[f"{split}/{cls}/{path.name}"] = array
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return pixels


def test_imagefolder_loads_and_caches(tmp_path, monkeypatch):
    root, cache = tmp_path / "tree", tmp_path / "cache"
    pixels = write_tree(root)
    ds = load_dataset("imagefolder", root, cache_dir=cache)
    assert ds.classes == ["ant", "bee", "cat"] and ds.num_classes == 3
    assert ds.input_shape == (3, 10, 12)  # C, H, W of 12 x 10 pixel images
    assert len(ds.train) == 12 and len(ds.test) == 6
    assert ds.train.class_counts().tolist() == [4, 4, 4]
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # files are taken in sorted order within a class: ant's 0000.png is the first image
    expected = torch.from_numpy(pixels["train/ant/0000.png"]).permute(2, 0, 1)
    assert torch.equal(ds.train.images[0], expected)

    files = list((cache / "imagefolder").glob("*.safetensors"))
    assert len(files) == 1 and not list((cache / "imagefolder").glob(".*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(data, "_decode_split", no_decoding)
        again = load_dataset("imagefolder", str(root), cache_dir=cache)
    assert torch.equal(again.train.images, ds.train.images)
    assert torch.equal(again.test.labels, ds.test.labels)
    assert again.classes == ds.classes and again.mean == ds.mean

    # a new file makes the cache stale: the tree is decoded again and the cache replaced
    Image.fromarray(pixels["train/ant/0000.png"]).save(root / "train" / "bee" / "0099.png")
    grown = load_dataset("imagefolder", root, cache_dir=cache)
    assert grown.train.class_counts().tolist() == [4, 5, 4]
    assert len(list((cache / "imagefolder").glob("*.safetensors"))) == 1


def test_imagefolder_jpeg_matches_pil(tmp_path):
    root = tmp_path / "tree"
    write_tree(root)
    ds = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    jpeg = np.asarray(Image.open(root / "train" / "ant" / "0001.jpg").convert("RGB"))
    got = ds.train.images[1].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - jpeg.astype(int)).max() <= 2  # libjpeg versions may round differently


def test_imagefolder_gray_images_give_one_channel(tmp_path):
    root = tmp_path / "tree"
    write_tree(root, size=(8, 8), gray=True)
    ds = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert ds.input_shape == (1, 8, 8) and len(ds.mean) == 1


def test_imagefolder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder", missing, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(missing) in message and "train/<class>" in message and "\n" not in message

    with pytest.raises(DataError, match="data.dir"):
        load_dataset("imagefolder", None)

    root = tmp_path / "tree"
    write_tree(root)
    odd = root / "train" / "bee" / "0005.png"
    Image.fromarray(np.zeros((9, 12, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(DataError, match="0005.png") as info:
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    assert "same size" in str(info.value)
    odd.unlink()

    broken = root / "test" / "ant" / "0007.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="0007.jpg"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")
    broken.write_bytes(b"")
    with pytest.raises(DataError, match="0007.jpg is empty"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache")


def test_unknown_source_lists_known_ones():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet-1k", None)
    assert all(name in str(info.value) for name in data.SOURCES)


# torchvision datasets, offline ----------------------------------------------------------------


@pytest.mark.parametrize("source", ["cifar10", "mnist"])
def test_torchvision_offline_is_one_clear_line(tmp_path, monkeypatch, source):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset(source, empty)
    message = str(info.value)
    assert calls, "the download was not attempted"
    assert str(empty) in message and "data.dir" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


# augmentation ---------------------------------------------------------------------------------


def test_crop_flip_zero_shift_is_identity_and_shifts_move_pixels():
    x = ids_split(6).images
    zeros = torch.zeros(6, dtype=torch.int64)
    no = torch.zeros(6, dtype=torch.bool)
    assert torch.equal(crop_flip(x, zeros, zeros, no), x)

    down = crop_flip(x, zeros + 1, zeros, no)  # out[r] = in[r + 1]
    assert down.shape == x.shape and down.dtype == torch.uint8
    assert torch.equal(down[:, :, :-1], x[:, :, 1:])
    assert not down[:, :, -1].any()

    left = crop_flip(x, zeros, zeros - 2, no)  # out[:, c] = in[:, c - 2]
    assert torch.equal(left[..., 2:], x[..., :-2]) and not left[..., :2].any()
    assert not torch.equal(left, x)

    corner = crop_flip(x, zeros + 4, zeros + 4, no)
    assert torch.equal(corner[:, :, :4, :4], x[:, :, 4:, 4:]) and not corner[:, :, 4:].any()


def test_crop_flip_flips():
    x = ids_split(4).images
    zeros = torch.zeros(4, dtype=torch.int64)
    flip = torch.tensor([True, False, True, False])
    out = crop_flip(x, zeros, zeros, flip)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[2], x[2].flip(-1))
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])
    shifted = crop_flip(x, zeros + 1, zeros + 3, flip)
    plain = crop_flip(x, zeros + 1, zeros + 3, torch.zeros(4, dtype=torch.bool))
    assert torch.equal(shifted[0], plain[0].flip(-1))
    with pytest.raises(ValueError):
        crop_flip(x, zeros + 5, zeros, flip)


def test_test_batches_in_order_and_normalised():
    split = ids_split(10)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batches = Batches(split, 4, mean=mean, std=std, train=False)
    assert len(batches) == 3
    out = list(batches)
    assert [len(y) for _, y in out] == [4, 4, 2]
    x = torch.cat([b for b, _ in out])
    assert x.dtype == torch.float32 and x.shape == (10, 3, 8, 8)
    assert torch.equal(torch.cat([y for _, y in out]), torch.arange(10))
    assert torch.allclose(x, normalise(split.images, mean, std), atol=1e-5)
    assert len(Batches(split, 4, mean=mean, std=std, train=False, drop_last=True)) == 2


def test_train_batches_shuffle_augment_and_cover_the_split():
    split = ids_split(40)
    mean, std = (0.5,) * 3, (0.25,) * 3
    batches = Batches(split, 16, mean=mean, std=std, train=True, seed=0)
    assert len(batches) == 3
    xs, ys = zip(*batches, strict=True)
    assert [len(y) for y in ys] == [16, 16, 8]
    assert all(x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32 for x in xs)
    ys = torch.cat(ys)
    assert sorted(ys.tolist()) == list(range(40)) and not torch.equal(ys, torch.arange(40))
    x = torch.cat(xs)

    # every sample is its source shifted by at most 4 pixels and perhaps flipped
    candidates = [(dy, dx, f) for dy in range(-4, 5) for dx in range(-4, 5) for f in (False, True)]
    seen = set()
    for i in range(40):
        src = split.images[ys[i]].unsqueeze(0)
        for dy, dx, f in candidates:
            one = torch.tensor([dy]), torch.tensor([dx]), torch.tensor([f])
            if torch.allclose(x[i], normalise(crop_flip(src, *one), mean, std)[0], atol=1e-5):
                seen.add((dy != 0 or dx != 0, f))
                break
        else:
            raise AssertionError(f"sample {i} is no shifted, flipped copy of image {ys[i]}")
    assert (True, True) in seen and (True, False) in seen  # shifted ones, flipped or not

    no_aug = Batches(split, 16, mean=mean, std=std, train=True, seed=0, augment=False)
    x2, y2 = next(iter(no_aug))
    assert torch.allclose(x2, normalise(split.images[y2], mean, std), atol=1e-5)


def test_train_batches_deterministic_and_resumable():
    split = ids_split(50)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, train=True)
    a, b = Batches(split, 8, seed=7, **kw), Batches(split, 8, seed=7, **kw)
    epoch_a, epoch_b = list(a), list(b)
    assert all(
        torch.equal(x1, x2) and torch.equal(y1, y2)
        for (x1, y1), (x2, y2) in zip(epoch_a, epoch_b, strict=True)
    )
    second = list(a)
    assert not torch.equal(second[0][1], epoch_a[0][1])  # reshuffled each epoch
    other = list(Batches(split, 8, seed=8, **kw))
    assert not torch.equal(other[0][1], epoch_a[0][1])

    # stop after three batches, save, and resume in a fresh object: same remaining batches
    run = Batches(split, 8, seed=3, **kw)
    reference = list(run) + list(run)
    run = Batches(split, 8, seed=3, **kw)
    it = iter(run)
    for _ in range(3):
        next(it)
    state = run.state_dict()
    assert state["position"] == 3 and state["epoch"] == 1
    resumed = Batches(split, 8, seed=99, **kw)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert len(rest) == len(reference) - 3
    for (x1, y1), (x2, y2) in zip(reference[3:], rest, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert resumed.epoch == 2 and resumed.state_dict()["position"] == 0

    # a state saved between epochs resumes with the next epoch
    run = Batches(split, 8, seed=3, **kw)
    list(run)
    fresh = Batches(split, 8, seed=0, **kw)
    fresh.load_state_dict(run.state_dict())
    assert all(
        torch.equal(y1, y2) for (_, y1), (_, y2) in zip(reference[len(run) :], fresh, strict=True)
    )


def test_dataset_batches_helper(shapes):
    train = shapes.batches(True, 256, seed=0)
    x, y = next(iter(train))
    assert x.shape == (256, 3, 32, 32) and y.shape == (256,) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5  # roughly normalised
    assert len(shapes.batches(False, 256)) == 4  # 1,000 test images


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda_match_cpu():
    split = ids_split(64)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=1)
    cpu = list(Batches(split, 16, **kw))
    gpu = list(Batches(split, 16, device="cuda", **kw))
    for (x1, y1), (x2, y2) in zip(cpu, gpu, strict=True):
        assert x2.device.type == "cuda"
        assert torch.equal(y1, y2.cpu()) and torch.allclose(x1, x2.cpu(), atol=1e-5)


def test_cifar10_local_copy_is_converted(tmp_path, monkeypatch):
    """A copy in data.dir is read without the network and becomes N x 3 x 32 x 32 uint8."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    chw = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]:
        chw[name] = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
        entry = {"data": chw[name].reshape(2, -1), "labels": [1, 9]}
        (base / name).write_bytes(pickle.dumps(entry))
    chw["test_batch"] = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    entry = {"data": chw["test_batch"].reshape(3, -1), "labels": [0, 2, 4]}
    (base / "test_batch").write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [*names, "truck"]}))
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("went online"))

    ds = load_dataset("cifar10", tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.classes[-1] == "truck"
    assert len(ds.train) == 10 and ds.test.labels.tolist() == [0, 2, 4]
    assert torch.equal(ds.train.images[0], torch.from_numpy(chw["data_batch_1"][0]))
    assert torch.equal(ds.test.images, torch.from_numpy(chw["test_batch"]))


def test_mnist_local_copy_is_one_channel(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def idx(path: Path, array: np.ndarray) -> None:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(
            int(n).to_bytes(4, "big") for n in array.shape
        )
        path.write_bytes(header + array.tobytes())

    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        idx(raw / f"{prefix}-images-idx3-ubyte", images)
        idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("went online"))

    ds = load_dataset("mnist", tmp_path)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.mean) == 1
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(images))
    assert ds.test.labels.tolist() == [0, 1, 2, 3, 4]
