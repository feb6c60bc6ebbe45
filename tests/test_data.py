"""Tests for activecrl.data: loading, caching, archive safety and the device batch path."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from activecrl.data import (
    DATASETS,
    DeviceData,
    ImageDataset,
    channel_stats,
    default_data_dir,
    train_steps,
    device_split,
    load_dataset,
    load_image_folder,
)
from activecrl.core.errors import ConfigError, DataError, RegistryError

SHARED = Path("/work/shared/data")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _make_folder(root: Path, *, n_train=4, n_test=2, size=32, classes=("dog", "cat"), gray=False, seed=0):
    """ImageFolder tree of random PNGs; returns {relpath: array} for checking decoded pixels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size, size) if gray else (size, size, 3)
                arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.png")
                arrays[f"{split}/{cls}/{i:03d}.png"] = arr
    return arrays


def _tar_dir(src: Path, out: Path, arcname: str) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return out


def _data(n=16, c=3, h=32, w=32, augment=True, seed=0, pad=4, images=None):
    g = torch.Generator().manual_seed(seed)
    if images is None:
        images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.arange(images.shape[0]) % 10
    return DeviceData(images, labels, (0.5,) * images.shape[1], (0.25,) * images.shape[1],
                      augment=augment, device="cpu", pad=pad)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# digits, registry, defaults
# ---------------------------------------------------------------------------------------------
def test_digits_offline_fixed_stratified_split(tmp_path):
    a = load_dataset("digits", data_dir=tmp_path, download=False, cache=False)
    b = load_dataset("digits", data_dir=tmp_path / "other", download=False, cache=False)
    assert (a.n_train, a.n_test) == (1347, 450)
    assert a.train_images.dtype == torch.uint8 and a.train_images.shape[1:] == (1, 8, 8)
    assert a.train_labels.dtype == torch.int64
    assert (a.num_classes, a.in_channels, a.image_size, a.augment) == (10, 1, 8, False)
    assert int(a.train_images.max()) == 255 and int(a.train_images.min()) == 0
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    p_train = torch.bincount(a.train_labels, minlength=10) / a.n_train
    p_test = torch.bincount(a.test_labels, minlength=10) / a.n_test
    assert torch.allclose(p_train, p_test, atol=0.01)
    assert all(0 < m < 1 for m in a.mean) and all(0 < s < 1 for s in a.std)


def test_registry_and_unknown_name(tmp_path):
    assert {"digits", "cifar10", "cifar100", "svhn"} <= set(DATASETS.names())
    with pytest.raises(RegistryError, match="valid datasets are.*digits"):
        load_dataset("no_such_dataset", data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope" / "data.tar.gz"), data_dir=tmp_path)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTIVECRL_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert default_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ACTIVECRL_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "activecrl"


def test_cache_hit_skips_decoding(tmp_path, caplog):
    calls = []
    base = DATASETS.get("digits")

    def counting(data_dir, download):
        calls.append(1)
        return base(data_dir, download)

    DATASETS.register("digits_counted", counting)
    try:
        with caplog.at_level(logging.INFO, logger="activecrl.data"):
            first = load_dataset("digits_counted", data_dir=tmp_path)
            second = load_dataset("digits_counted", data_dir=tmp_path)
    finally:
        DATASETS.unregister("digits_counted")
    assert len(calls) == 1  # the second load decoded nothing
    assert list((tmp_path / "cache").glob("digits_counted-*.pt"))
    assert not list((tmp_path / "cache").glob(".*tmp"))  # atomic write left no temp file
    assert "from cache" in caplog.text and "decoding" in caplog.text
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    assert (first.classes, first.mean, first.std, first.augment) == (second.classes, second.mean, second.std,
                                                                     second.augment)


def test_corrupt_cache_file_is_rebuilt(tmp_path):
    load_dataset("digits", data_dir=tmp_path)
    (cache_file,) = (tmp_path / "cache").glob("digits-*.pt")
    cache_file.write_bytes(b"garbage")
    ds = load_dataset("digits", data_dir=tmp_path)
    assert ds.n_train == 1347
    assert cache_file.stat().st_size > 1000


def test_augment_override(tmp_path):
    ds = load_dataset("digits", data_dir=tmp_path, augment=True)
    assert ds.augment is True
    assert load_dataset("digits", data_dir=tmp_path).augment is False


def test_missing_torchvision_dataset_names_directory(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "cifar10") in msg and "download" in msg and "archive" in msg


def test_torchvision_loaders_convert_layouts(tmp_path, monkeypatch):
    """The cifar/svhn loaders turn torchvision's numpy layouts into (N, C, H, W) uint8 tensors."""
    import torchvision

    rng = np.random.default_rng(0)
    hwc = {True: rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
           False: rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)}

    class FakeCIFAR:
        def __init__(self, root, train, download):
            assert Path(root) == tmp_path / "cifar10" and download is False
            self.data, self.targets = hwc[train], [i % 2 for i in range(len(hwc[train]))]
            self.classes = ["a", "b"]

    class FakeSVHN:
        def __init__(self, root, split, download):
            n = 6 if split == "train" else 4
            self.data = np.ascontiguousarray(hwc[split == "train"].transpose(0, 3, 1, 2))
            self.labels = np.arange(n) % 10

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    monkeypatch.setattr(torchvision.datasets, "SVHN", FakeSVHN)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False, cache=False)
    assert ds.train_images.shape == (6, 3, 32, 32) and ds.augment is True
    assert torch.equal(ds.train_images[2], torch.from_numpy(hwc[True][2]).permute(2, 0, 1))
    assert ds.train_labels.tolist() == [0, 1, 0, 1, 0, 1] and ds.classes == ["a", "b"]
    sv = load_dataset("svhn", data_dir=tmp_path, download=False, cache=False)
    assert torch.equal(sv.test_images[1], torch.from_numpy(hwc[False][1]).permute(2, 0, 1))
    assert sv.classes == [str(d) for d in range(10)] and sv.augment is True


# ---------------------------------------------------------------------------------------------
# ImageFolder directories and archives
# ---------------------------------------------------------------------------------------------
def test_image_folder_directory(tmp_path):
    arrays = _make_folder(tmp_path / "pets")
    ds = load_dataset(tmp_path / "pets", data_dir=tmp_path / "d")
    assert ds.name == "pets" and ds.classes == ["cat", "dog"]
    assert (ds.n_train, ds.n_test, ds.in_channels, ds.image_size, ds.augment) == (8, 4, 3, 32, True)
    assert ds.train_labels.tolist() == [0] * 4 + [1] * 4
    assert ds.test_labels.tolist() == [0, 0, 1, 1]
    expected = torch.from_numpy(arrays["train/dog/001.png"]).permute(2, 0, 1)
    assert torch.equal(ds.train_images[5], expected)
    mean, std = channel_stats(ds.train_images)
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std)


def test_image_folder_archive_with_top_folder(tmp_path):
    arrays = _make_folder(tmp_path / "src", gray=True, size=8)
    archive = _tar_dir(tmp_path / "src", tmp_path / "tiny.tar.gz", arcname="tiny")
    ds = load_dataset(str(archive), data_dir=tmp_path / "d")
    assert ds.name == "tiny" and ds.classes == ["cat", "dog"]
    assert ds.train_images.shape == (8, 1, 8, 8) and ds.augment is False  # 8x8: too small to crop
    assert torch.equal(ds.test_images[3, 0], torch.from_numpy(arrays["test/dog/001.png"]))
    # same pixels and order as the extracted directory
    direct = load_dataset(tmp_path / "src", data_dir=tmp_path / "d")
    assert torch.equal(direct.train_images, ds.train_images) and torch.equal(direct.train_labels, ds.train_labels)


def test_changed_folder_invalidates_cache(tmp_path):
    _make_folder(tmp_path / "pets", n_train=2, n_test=1)
    assert load_dataset(tmp_path / "pets", data_dir=tmp_path / "d").n_train == 4
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "pets/train/cat/new.png")
    assert load_dataset(tmp_path / "pets", data_dir=tmp_path / "d").n_train == 5


def _tar_with_member(path: Path, info: tarfile.TarInfo, payload: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        good = io.BytesIO()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(good, format="PNG")
        ok = tarfile.TarInfo("d/train/a/0.png")
        ok.size = len(good.getvalue())
        tf.addfile(ok, io.BytesIO(good.getvalue()))
        info.size = len(payload) if info.isfile() else 0
        tf.addfile(info, io.BytesIO(payload) if payload else None)
    return path


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "d/train/../../evil.png", "symlink", "device"])
def test_unsafe_archive_members_are_rejected(tmp_path, member):
    if member == "symlink":
        info = tarfile.TarInfo("d/train/a/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    elif member == "device":
        info = tarfile.TarInfo("d/train/a/dev")
        info.type = tarfile.CHRTYPE
    else:
        info = tarfile.TarInfo(member)
    archive = _tar_with_member(tmp_path / "bad.tar.gz", info, b"x" * 10 if info.isfile() else b"")
    with pytest.raises(DataError, match="unsafe member"):
        load_dataset(archive, data_dir=tmp_path / "d")
    with pytest.raises(DataError, match="unsafe member"):
        load_image_folder(archive, data_dir=tmp_path / "d")
    assert not (tmp_path / "evil.png").exists()


def test_corrupt_image_names_file(tmp_path):
    _make_folder(tmp_path / "pets", n_train=2, n_test=1)
    (tmp_path / "pets/train/cat/broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(tmp_path / "pets", data_dir=tmp_path / "d")


def test_odd_size_names_file_and_size(tmp_path):
    _make_folder(tmp_path / "pets", n_train=2, n_test=1)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "pets/train/dog/odd.png")
    with pytest.raises(DataError, match=r"odd.png is 24x20"):
        load_dataset(tmp_path / "pets", data_dir=tmp_path / "d")


def test_bad_layouts(tmp_path):
    _make_folder(tmp_path / "a", n_train=1, n_test=1)
    (tmp_path / "a/test/dog/000.png").unlink()
    (tmp_path / "a/test/dog").rmdir()
    with pytest.raises(DataError, match="same class folders.*only in train: \\['dog'\\]"):
        load_dataset(tmp_path / "a", data_dir=tmp_path / "d")
    nested = tmp_path / "nested"
    (nested / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(nested / "cats" / "x.png")
    with pytest.raises(DataError, match="train/ and test/"):
        load_dataset(nested, data_dir=tmp_path / "d")


def test_a_flat_folder_is_an_unlabeled_dataset(tmp_path):
    """Images without class folders: every image in the training split, one class, no test split
    (what `activecrl pretrain` embeds); their files in path order."""
    from activecrl.data import dataset_train_files

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(flat / f"{2 - i}.png")
    ds = load_dataset(flat, data_dir=tmp_path / "d")
    assert (ds.n_train, ds.n_test, ds.classes) == (3, 0, ["unlabeled"])
    assert [int(x) for x in ds.train_images[:, 0, 0, 0]] == [120, 60, 0]  # 0.png, 1.png, 2.png
    assert dataset_train_files(flat) == ["0.png", "1.png", "2.png"]


def test_load_image_folder_flat_nested_resize(tmp_path):
    root = tmp_path / "ood"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(root / "a.png")
    Image.fromarray(np.full((16, 16), 50, np.uint8)).save(root / "sub" / "b.jpg")
    (root / "notes.txt").write_text("ignored")
    imgs = load_image_folder(root, data_dir=tmp_path / "d")
    assert imgs.shape == (2, 3, 16, 16) and imgs.dtype == torch.uint8  # one RGB -> all RGB
    assert int(imgs[0, 0, 0, 0]) == 200 and abs(int(imgs[1, 2, 5, 5]) - 50) <= 2
    small = load_image_folder(root, data_dir=tmp_path / "d", size=8, channels=1)
    assert small.shape == (2, 1, 8, 8)
    archive = _tar_dir(root, tmp_path / "ood.tgz", arcname="ood")
    assert torch.equal(load_image_folder(archive, data_dir=tmp_path / "d"), imgs)
    with pytest.raises(ConfigError):
        load_image_folder(root, size=0)


def test_link_cycle_and_truncated_archive(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(20):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(root / f"{i:02d}.png")
    archive = _tar_dir(root, tmp_path / "imgs.tar.gz", arcname="imgs")
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert load_image_folder(root, data_dir=tmp_path / "d").shape == (20, 1, 4, 4)
    data = archive.read_bytes()
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tar.gz is corrupt or truncated"):
        load_image_folder(truncated, data_dir=tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# ImageDataset validation
# ---------------------------------------------------------------------------------------------
def test_image_dataset_validation():
    imgs = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    imgs[0] = 255
    labels = torch.tensor([0, 1, 0, 1])
    ok = ImageDataset("t", imgs, labels, imgs, labels, ["a", "b"])
    assert (ok.num_classes, ok.in_channels, ok.image_size, ok.n_train, ok.n_test, ok.augment) == (2, 3, 8, 4, 4, False)
    with pytest.raises(DataError, match="uint8"):
        ImageDataset("t", imgs.float(), labels, imgs, labels, ["a", "b"])
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ImageDataset("t", imgs[0], labels, imgs, labels, ["a", "b"])
    with pytest.raises(DataError, match="shape \\(4,\\)"):
        ImageDataset("t", imgs, labels[:3], imgs, labels, ["a", "b"])
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        ImageDataset("t", imgs, labels + 1, imgs, labels, ["a", "b"])
    with pytest.raises(DataError, match="same \\(C, H, W\\)"):
        ImageDataset("t", imgs, labels, imgs[:, :1], labels, ["a", "b"])
    with pytest.raises(DataError, match="3 finite numbers"):
        ImageDataset("t", imgs, labels, imgs, labels, ["a", "b"], mean=(0.5,), std=(0.2,) * 3)


# ---------------------------------------------------------------------------------------------
# DeviceData
# ---------------------------------------------------------------------------------------------
def test_device_split_shapes_dtypes_normalisation(tmp_path):
    ds = load_dataset("digits", data_dir=tmp_path)
    train = device_split(ds, "train", "cpu")
    test = device_split(ds, "test", "cpu")
    assert (train.n, test.n, train.device.type) == (ds.n_train, ds.n_test, "cpu")
    x, y, idx = next(test.eval_batches(batch_size=64))
    assert x.dtype == torch.float32 and x.shape == (64, 1, 8, 8)
    assert y.dtype == torch.int64 and idx.dtype == torch.int64
    expected = (ds.test_images[:64].double() / 255 - ds.mean[0]) / ds.std[0]
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert torch.equal(y, ds.test_labels[:64])
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        device_split(ds, "val", "cpu")


def test_channels_last_output():
    data = DeviceData(torch.zeros(8, 3, 8, 8, dtype=torch.uint8), torch.zeros(8, dtype=torch.long),
                      (0.5,) * 3, (0.25,) * 3, augment=True, device="cpu", channels_last=True)
    x, _, _ = next(data.train_batches(torch.arange(8), 4, _gen(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_crop_zero_fraction_matches_expectation():
    n = 3000
    data = _data(images=torch.full((n, 1, 32, 32), 255, dtype=torch.uint8))
    out = data.augment(data.images, _gen(1))
    zero_fraction = (out == 0).double().mean().item()
    # border rows/cols per side ~ |U{0..8} - 4|, mean 20/9: fraction 1 - (1 - 20/288)^2
    assert zero_fraction == pytest.approx(1 - (1 - 20 / 288) ** 2, abs=0.006)
    assert set(torch.unique(out).tolist()) == {0, 255}


def test_crops_are_true_windows_and_offsets_cover_range():
    n, h, w, p = 2000, 32, 32, 4
    rows = torch.arange(1, h + 1, dtype=torch.uint8).view(h, 1).expand(h, w)
    cols = torch.arange(1, w + 1, dtype=torch.uint8).view(1, w).expand(h, w)
    noise = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=_gen(2))
    images = torch.stack([rows.expand(n, h, w), cols.expand(n, h, w), noise], dim=1).contiguous()
    data = _data(images=images)
    out = data.augment(images, _gen(3))
    dy = out[:, 0, h // 2, w // 2].long() - 1 - h // 2 + p  # the centre pixel is never padding
    flipped = out[:, 1, h // 2, w // 2 + 1].long() < out[:, 1, h // 2, w // 2].long()
    centre_col = out[:, 1, h // 2, w // 2].long() - 1
    dx = torch.where(flipped, centre_col - (w - 1 - w // 2), centre_col - w // 2) + p
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    for i in range(n):
        window = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        assert torch.equal(out[i], window.flip(2) if flipped[i] else window), i
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=2 * p + 1)
        assert counts.numel() == 2 * p + 1 and int(counts.min()) > n / 9 * 0.7  # every offset, ~uniform
    assert abs(flipped.double().mean().item() - 0.5) < 0.04


def test_flip_rate_without_padding():
    img = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    img[..., :2] = 255  # left half bright
    data = _data(images=img.expand(4000, 1, 4, 4).contiguous(), pad=0)
    out = data.augment(data.images, _gen(4))
    flipped = out[:, 0, 0, 0] == 0
    assert torch.equal(out[flipped], img.flip(3).expand(int(flipped.sum()), 1, 4, 4))
    assert torch.equal(out[~flipped], img.expand(int((~flipped).sum()), 1, 4, 4))
    assert abs(flipped.double().mean().item() - 0.5) < 0.03


def test_no_augmentation_when_disabled():
    data = _data(n=20, augment=False)
    seen = []
    for x, y, idx in data.train_batches(torch.arange(20), 8, _gen(0)):
        assert torch.allclose(x, data.normalize(data.images[idx]))
        assert torch.equal(y, data.labels[idx])
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(20))


def test_train_batches_augment_and_shuffle():
    data = _data(n=20)
    batches = list(data.train_batches(torch.arange(2, 20), 8, _gen(0)))  # 18 = 8 + 8 + 2
    idx = torch.cat([b[2] for b in batches])
    assert sorted(idx.tolist()) == list(range(2, 20)) and idx.tolist() != list(range(2, 20))
    x, y, i = batches[0]
    assert x.shape == (8, 3, 32, 32) and not torch.allclose(x, data.normalize(data.images[i]))


def test_eval_batches_cover_each_index_once_in_order():
    data = _data(n=23)
    idx = torch.cat([b[2] for b in data.eval_batches(batch_size=5)])
    assert idx.tolist() == list(range(23))
    chosen = [7, 3, 19, 0, 22]
    batches = list(data.eval_batches(np.array(chosen), batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert torch.cat([b[2] for b in batches]).tolist() == chosen
    assert torch.allclose(torch.cat([b[0] for b in batches]), data.normalize(data.images[chosen]))
    assert list(data.eval_batches([], batch_size=4)) == []


def test_determinism():
    data = _data(n=40)

    def run(seed):
        return list(data.train_batches(torch.arange(40), 16, _gen(seed)))

    a, b, c = run(7), run(7), run(8)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert not all(torch.equal(ia, ic) for (_, _, ia), (_, _, ic) in zip(a, c))


def test_single_sample_last_batch_dropped():
    data = _data(n=12)
    sizes = [b[0].shape[0] for b in data.train_batches(torch.arange(9), 4, _gen(0))]
    assert sizes == [4, 4]
    sizes = [b[0].shape[0] for b in data.train_batches(torch.arange(10), 4, _gen(0))]
    assert sizes == [4, 4, 2]
    for n in range(2, 12):  # the trainer's step count (its lr schedule) is the iterator's batch count
        assert train_steps(n, 4) == len(list(data.train_batches(torch.arange(n), 4, _gen(0))))


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0, 16]), r"\[0, 16\)"),
    (torch.tensor([-1, 2]), r"\[0, 16\)"),
    (torch.tensor([0.0, 1.0]), "integers"),
    (np.array([True, False]), "boolean mask"),
    (torch.tensor([[0, 1]]), "1-D"),
    (torch.tensor([3]), "at least 2"),
])
def test_bad_indices_raise_config_error(bad, match):
    data = _data(n=16)
    with pytest.raises(ConfigError, match=match):
        next(data.train_batches(bad, 4, _gen(0)))


def test_bad_arguments():
    data = _data(n=16)
    with pytest.raises(ConfigError, match="batch_size"):
        next(data.train_batches(torch.arange(16), 1, _gen(0)))
    with pytest.raises(ConfigError, match=r"\[0, 16\)"):
        data.eval_batches([16])  # checked at the call, before the first batch
    with pytest.raises(ConfigError, match="torch.Generator"):
        next(data.train_batches(torch.arange(16), 4, 123))
    with pytest.raises(ConfigError, match="uint8"):
        data.normalize(torch.zeros(2, 3, 32, 32))
    unlabeled = DeviceData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), None, (0.5,), (0.5,), augment=False,
                           device="cpu")
    assert next(unlabeled.eval_batches())[1].tolist() == [-1, -1, -1]


# ---------------------------------------------------------------------------------------------
# the real CIFAR-10 copy (slow: decodes 60,000 JPEGs)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10.tar.gz").exists(), reason="shared CIFAR-10 archive not present")
def test_shared_cifar10_archive(tmp_path, caplog):
    ds = load_dataset(SHARED / "cifar10.tar.gz", data_dir=tmp_path)
    assert (ds.n_train, ds.n_test, ds.image_shape, ds.augment) == (50000, 10000, (3, 32, 32), True)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(ds.train_labels).tolist() == [5000] * 10
    assert ds.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)
    with caplog.at_level(logging.INFO, logger="activecrl.data"):
        again = load_dataset(SHARED / "cifar10.tar.gz", data_dir=tmp_path)
    assert "from cache" in caplog.text and "decoding" not in caplog.text  # the second load decoded nothing
    assert torch.equal(again.train_images, ds.train_images)
    ood = load_image_folder(SHARED / "tinyimagenet-resize.tar.gz", data_dir=tmp_path)
    assert ood.shape == (10000, 3, 32, 32)
