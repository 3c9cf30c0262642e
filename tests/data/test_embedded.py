"""The offline default: shipped Fashion-MNIST victims, and where the public (train) split comes from."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ggl.data import DataNotFoundError, EmbeddedFashionMNIST, make_datamodule
from ggl.data import embedded as embedded_module


def _write_idx(path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    """No local copy anywhere: the Debian path points to an empty folder and the cache is a fresh one."""
    monkeypatch.setattr(embedded_module, "DEBIAN_ROOT", tmp_path / "no-debian-package")
    monkeypatch.setenv("GGL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_victims_are_1000_shipped_test_images() -> None:
    dm = make_datamodule("embedded")
    dm.setup("predict")
    assert len(dm.victims) == 1000
    images, labels = dm.victim_batch(list(range(1000)))
    assert images.shape == (1000, 1, 32, 32) == (1000, *dm.image_shape)
    assert images.dtype == torch.float32 and images.min() == 0 and images.max() == 1
    assert torch.bincount(labels, minlength=10).tolist() == [100] * 10
    assert images[:, :, :2].abs().sum() == 0 and images[:, :, :, -2:].abs().sum() == 0  # zero padding 28 -> 32
    assert dm.normalization.mean == (0.2190,) and dm.num_classes == 10 and len(dm.classes) == 10
    small = EmbeddedFashionMNIST(image_size=28)
    torch.testing.assert_close(small.victim_batch([5])[0][0], images[5, :, 2:30, 2:30])


def test_victim_indices_are_a_function_of_the_seed() -> None:
    dm = EmbeddedFashionMNIST(seed=4)
    chosen = dm.victim_indices(20)
    assert chosen == EmbeddedFashionMNIST(seed=4).victim_indices(20) == dm.victim_indices(20, seed=4)
    assert len(set(chosen)) == 20 and all(0 <= i < 1000 for i in chosen)
    assert chosen != dm.victim_indices(20, seed=5)
    assert dm.victim_indices(5) == chosen[:5]
    for count in (0, 1001):
        with pytest.raises(ValueError, match=r"count must be in \[1, 1000\]"):
            dm.victim_indices(count)


def test_class_means_are_the_shipped_prior_only_reference() -> None:
    means = EmbeddedFashionMNIST().class_means()
    assert means.shape == (10, 1, 32, 32)
    assert means.min() >= 0 and means.max() <= 1
    assert means[1].mean() < means[2].mean()  # trousers cover less of the frame than pullovers


def test_missing_train_split_says_the_three_ways(no_fashion_mnist) -> None:
    dm = EmbeddedFashionMNIST(data_root=no_fashion_mnist / "bogus", download=False)
    dm.setup("predict")  # the victims never need the train split
    assert len(dm.victims) == 1000
    with pytest.raises(DataNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    for expected in ("--data-root", "FashionMNIST/raw/train-images-idx3-ubyte", "download", "dataset-fashion-mnist"):
        assert expected in message
    with pytest.raises(DataNotFoundError, match="no --data-root"):
        EmbeddedFashionMNIST(download=False).train_dataloader()


def test_public_split_from_a_data_root_with_gzipped_train_files(no_fashion_mnist) -> None:
    raw = no_fashion_mnist / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte.gz", pixels)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(6) % 10)
    dm = EmbeddedFashionMNIST(data_root=no_fashion_mnist / "root", download=False, batch_size=4)
    dm.setup("fit")
    images, labels = dm.public.tensors
    assert images.shape == (6, 1, 32, 32) and labels.tolist() == list(range(6))
    torch.testing.assert_close(images[:, 0, 2:30, 2:30], torch.as_tensor(pixels, dtype=torch.float32) / 255)
    batch, _ = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 1, 32, 32)


def test_malformed_train_files(no_fashion_mnist) -> None:
    raw = no_fashion_mnist / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(DataNotFoundError, match="not a uint8 idx file"):
        EmbeddedFashionMNIST(data_root=no_fashion_mnist, download=False).setup("fit")


def test_bad_arguments() -> None:
    allowed = "allowed: celeba, embedded, fashion-mnist, imagenet"
    with pytest.raises(ValueError, match=f"unknown datamodule 'cifar10'; {allowed}"):
        make_datamodule("cifar10")
    with pytest.raises(ValueError, match="did you mean 'celeba'"):
        make_datamodule("celebA")
    for size in (4, 513, "abc", True):
        with pytest.raises(ValueError, match="image_size must be an integer from 8 to 512"):
            EmbeddedFashionMNIST(image_size=size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EmbeddedFashionMNIST(batch_size="64")
    with pytest.raises(ValueError, match="download must be True or False"):
        EmbeddedFashionMNIST(download="no")


@pytest.mark.skipif(
    not (embedded_module.DEBIAN_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_debian_train_split_matches_the_shipped_class_means(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GGL_CACHE", str(tmp_path))
    dm = EmbeddedFashionMNIST(download=False)
    dm.setup("fit")
    images, labels = dm.public.tensors
    assert images.shape == (60000, 1, 32, 32) and torch.bincount(labels).tolist() == [6000] * 10
    computed = torch.stack([images[labels == c].mean(0) for c in range(10)])
    torch.testing.assert_close(dm.class_means().float(), computed, atol=1e-3, rtol=0)


def test_debian_files_are_unpacked_whole(tmp_path, monkeypatch) -> None:
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in embedded_module.RAW_FILES:
        with gzip.open(debian / f"{name}.gz", "wb") as out:
            out.write(name.encode())
    monkeypatch.setattr(embedded_module, "DEBIAN_ROOT", debian)
    raw = embedded_module._unpack_debian(tmp_path / "cache") / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(embedded_module.RAW_FILES)
    assert all((raw / name).read_bytes() == name.encode() for name in embedded_module.RAW_FILES)
