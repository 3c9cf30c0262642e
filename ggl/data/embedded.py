"""The embedded default: Fashion-MNIST victims shipped inside the package, so the suite runs offline.

Victims: 1,000 images of the Fashion-MNIST *test* split (the first 100 of each class, in test order), stored in
``assets/fashion_mnist_test_slice.npz`` with their test indices. Public split (prior training): the Fashion-MNIST
*train* split, looked up in this order: ``data_root`` (torchvision layout ``ROOT/FashionMNIST/raw/``), torchvision's
download when ``download=True`` and online, then the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). Images are zero-padded from 28 to 32 px (Fashion-MNIST's background is 0).

Fashion-MNIST: Xiao, Rasul, Vollgraf 2017, arXiv 1708.07747, (c) Zalando SE, MIT licence.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ggl.checks import boolean
from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.fl.normalization import Normalization
from ggl.io import atomic_write_with

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
MAX_IMAGE_SIZE = 512
"""Largest image side (the originals are 28 px; 1,000 victims at 512 px already take 1 GB)."""
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def cache_root() -> Path:
    """Where unpacked datasets are cached: ``$GGL_CACHE`` or ``~/.cache/ggl-bench``."""
    return Path(os.environ.get("GGL_CACHE", Path.home() / ".cache" / "ggl-bench"))


def _asset(name: str) -> np.lib.npyio.NpzFile:
    with resources.as_file(resources.files("ggl.data") / "assets" / name) as path:
        return np.load(path)


def _to_images(pixels: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, S, S) in [0, 1]: zero-padded to 32, resized otherwise."""
    images = torch.as_tensor(np.asarray(pixels), dtype=torch.float32).unsqueeze(1) / 255.0
    if image_size == 28:
        return images
    if image_size == 32:
        return torch.nn.functional.pad(images, (2, 2, 2, 2))
    return torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)


def _has_raw(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in RAW_FILES[:2])


def _gunzip(source: Path, destination: Path) -> None:
    """Decompress ``source`` into ``destination`` atomically (an interrupted copy leaves no half file)."""

    def copy(partial: Path) -> None:
        with gzip.open(source, "rb") as compressed, open(partial, "wb") as out:
            shutil.copyfileobj(compressed, out)

    atomic_write_with(destination, copy)


def _unpack_debian(target: Path) -> Path:
    raw = target / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        source = DEBIAN_ROOT / f"{name}.gz"
        if source.is_file() and not (raw / name).is_file():
            _gunzip(source, raw / name)
    return target


def _missing_message(data_root: Path | None) -> str:
    where = f"--data-root {data_root}" if data_root else "no --data-root"
    return (
        f"Fashion-MNIST train split not found ({where}). Give it in one of three ways: "
        "(1) --data-root ROOT with ROOT/FashionMNIST/raw/train-images-idx3-ubyte[.gz] and "
        "train-labels-idx1-ubyte[.gz] (torchvision's layout); "
        "(2) an internet connection with download enabled (torchvision downloads it into ROOT); "
        "(3) the Debian/Ubuntu package: apt-get install dataset-fashion-mnist "
        f"(gzipped idx files in {DEBIAN_ROOT})."
    )


def fashion_mnist_train(
    data_root: str | Path | None = None, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Fashion-MNIST train split as uint8 (60000, 28, 28) images and int64 labels, found as the module says."""
    from torchvision.datasets import FashionMNIST

    root = Path(data_root) if data_root else None
    candidates: list[Path] = []
    if root is not None and _has_raw(root):
        candidates.append(root)
    if not candidates and download:
        target = root or cache_root()
        try:
            FashionMNIST(str(target), train=True, download=True)
            candidates.append(target)
        except Exception:  # offline: fall through to the Debian files
            pass
    if not candidates and (DEBIAN_ROOT / f"{RAW_FILES[0]}.gz").is_file():
        candidates.append(_unpack_debian(cache_root()))
    if not candidates:
        raise DataNotFoundError(_missing_message(root))
    raw = candidates[0] / "FashionMNIST" / "raw"
    images, labels = _read_idx(raw, RAW_FILES[0]), _read_idx(raw, RAW_FILES[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataNotFoundError(
            f"{_missing_message(root)} (the files in {raw} hold images of shape {tuple(images.shape)} and labels of "
            f"shape {tuple(labels.shape)})"
        )
    return images, labels.long()


def _read_idx(raw: Path, name: str) -> torch.Tensor:
    """A uint8 idx file (``name`` or ``name.gz`` in ``raw``) as a tensor; only the train files are needed."""
    path = raw / name if (raw / name).is_file() else raw / f"{name}.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise DataNotFoundError(f"Fashion-MNIST file {path} could not be read ({error})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataNotFoundError(f"Fashion-MNIST file {path} is not a uint8 idx file (wrong header)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    pixels = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if pixels.size != int(np.prod(shape)):
        raise DataNotFoundError(f"Fashion-MNIST file {path} is truncated: expected {shape}, got {pixels.size} values")
    return torch.from_numpy(pixels.reshape(shape).copy())


class EmbeddedFashionMNIST(VictimDataModule):
    """The offline default datamodule (see the module docstring for where each split comes from).

    Args:
        data_root: optional torchvision root holding ``FashionMNIST/raw`` (public split only).
        download: let torchvision download the public split when it is not found locally.
        image_size: 32 (zero-padding, default), 28 (as is) or any other size (bilinear resize).
        batch_size, num_workers, seed: see ``VictimDataModule``.

    Example:
        >>> dm = EmbeddedFashionMNIST()
        >>> images, labels = dm.victim_batch(dm.victim_indices(2))
        >>> tuple(images.shape)
        (2, 1, 32, 32)
    """

    name = "embedded"
    num_classes = 10
    classes = CLASSES

    def __init__(
        self,
        data_root: str | Path | None = None,
        download: bool = True,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer from 8 to {MAX_IMAGE_SIZE}, got {image_size!r}")
        self.data_root = data_root
        self.download = boolean("download", download)
        self.image_size = image_size
        self.image_shape = (1, image_size, image_size)
        # Statistics of the train split at the chosen size (zero padding lowers both at 32 px).
        self.normalization = (
            Normalization((0.2190,), (0.3318,)) if image_size == 32 else Normalization((0.2860,), (0.3530,))
        )

    def prepare_data(self) -> None:
        """Nothing to fetch for the victims; the public split is located lazily in ``setup("fit")``."""

    def setup(self, stage: str | None = None) -> None:
        if self.victims is None:
            data = _asset("fashion_mnist_test_slice.npz")
            self.victims = TensorDataset(
                _to_images(data["images"], self.image_size), torch.as_tensor(data["labels"]).long()
            )
        if stage in (None, "fit") and self.public is None:
            images, labels = fashion_mnist_train(self.data_root, self.download)
            self.public = TensorDataset(_to_images(images, self.image_size), labels)

    def class_means(self) -> torch.Tensor:
        """Mean public image of each class, (num_classes, 1, S, S) in [0, 1] - the prior-only reference.

        Shipped precomputed at 32 px (``assets/fashion_mnist_train_class_means.npz``); computed from the public
        split at other sizes.
        """
        if self.image_size == 32:
            return torch.as_tensor(_asset("fashion_mnist_train_class_means.npz")["means"]).unsqueeze(1)
        self.setup("fit")
        assert self.public is not None
        images, labels = self.public.tensors  # type: ignore[attr-defined]
        return torch.stack([images[labels == c].mean(0) for c in range(self.num_classes)])
