"""ImageNet (ILSVRC2012; Russakovsky et al., IJCV 2015, arXiv 1409.0575): GGL's high-resolution setting.

Victims are images of the *validation* split, resized to 256 and center-cropped to 224 (as GGL does); the
labels are the standard class indices 0-999 (WordNet IDs in sorted order, the order pretrained torchvision models
and BigGAN use). The ``public`` split is the train split when it is present; GGL's ImageNet prior is a pretrained
BigGAN, so it is not needed for attacks.

Normalisation: ``"ggl"`` (default) is mean = std = 0.5 per channel, as in GGL's code; ``"imagenet"`` is the usual
torchvision statistics (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225). The victims are untrained models in
both cases, so the choice changes the model input, not what an attack may use.

Accepted layouts (ROOT = ``data_root``)::

    A. torchvision's ImageNet:  ROOT/meta.bin or ROOT/ILSVRC2012_devkit_t12.tar.gz, and
                                ROOT/val/<wnid>/*.JPEG or ROOT/ILSVRC2012_img_val.tar (unpacked into ROOT/val
                                by torchvision on first use, 6.3 GB)
    B. a plain image folder:    ROOT/val/<wnid>/*.JPEG with all 1,000 class folders

Layout A also works with a partial copy (a few class folders): meta.bin maps each WordNet ID to its standard
index. Optional public split: ROOT/train/<wnid>/*.JPEG (or ILSVRC2012_img_train.tar in layout A).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.fl.normalization import Normalization

NORMALIZATIONS: dict[str, Normalization] = {
    "ggl": Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Input normalisations by name: GGL's (mean = std = 0.5) and torchvision's ImageNet statistics."""

META_FILE = "meta.bin"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
ARCHIVES = {"val": "ILSVRC2012_img_val.tar", "train": "ILSVRC2012_img_train.tar"}
NUM_CLASSES = 1000
WNID = re.compile(r"^n\d{8}$")
LAYOUT = (
    "either (A) ROOT/meta.bin or ROOT/ILSVRC2012_devkit_t12.tar.gz, plus ROOT/val/<wnid>/*.JPEG or "
    "ROOT/ILSVRC2012_img_val.tar (torchvision's ImageNet layout), or (B) ROOT/val/<wnid>/*.JPEG with all 1,000 "
    "class folders (wnid = WordNet ID such as n01440764)"
)


class _StandardIndex:
    """Target transform: a folder's class index -> the standard ImageNet index of its WordNet ID (picklable)."""

    def __init__(self, mapping: dict[int, int]) -> None:
        self.mapping = mapping

    def __call__(self, target: int) -> int:
        return self.mapping[int(target)]


def imagenet_transform() -> Any:
    """PIL image -> float tensor (3, 224, 224) in [0, 1]: resize the short side to 256, center crop 224."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(256, antialias=True), transforms.CenterCrop(224), transforms.ToTensor()]
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and WNID.match(entry.name))


def _has_meta(root: Path) -> bool:
    return (root / META_FILE).is_file() or (root / DEVKIT).is_file()


def _split_present(root: Path, split: str) -> bool:
    folder = root / split
    if folder.is_dir() and _class_folders(folder):
        return True
    return _has_meta(root) and (root / ARCHIVES[split]).is_file()


def _torchvision_split(root: Path, split: str) -> Any:
    """Layout A: ``torchvision.datasets.ImageNet`` with targets remapped to the standard indices."""
    from torchvision.datasets import ImageNet
    from torchvision.datasets.imagenet import load_meta_file

    try:
        dataset = ImageNet(str(root), split=split, transform=imagenet_transform())
        wnid_to_classes = load_meta_file(str(root))[0]
    except KeyError as error:
        raise DataNotFoundError(
            f"ImageNet at {root}: class folder {error} is not a WordNet ID listed in {META_FILE}. "
            f"Expected layout: {LAYOUT}."
        ) from None
    except (EOFError, pickle.UnpicklingError):
        raise DataNotFoundError(
            f"ImageNet at {root}: {META_FILE} is not the file torchvision's ImageNet writes (delete it to rebuild "
            f"it from {DEVKIT}). Expected layout: {LAYOUT}."
        ) from None
    except (RuntimeError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataNotFoundError(
            f"ImageNet at {root} could not be read ({reason}). Expected layout: {LAYOUT}."
        ) from None
    standard = {wnid: index for index, wnid in enumerate(sorted(wnid_to_classes))}
    dataset.target_transform = _StandardIndex({i: standard[wnid] for i, wnid in enumerate(dataset.wnids)})
    return dataset


def _folder_split(root: Path, split: str) -> Any:
    """Layout B: an ImageFolder over all 1,000 WordNet-ID folders (sorted order = standard indices)."""
    from torchvision.datasets import ImageFolder

    folder = root / split
    wnids = _class_folders(folder)
    if len(wnids) != NUM_CLASSES:
        raise DataNotFoundError(
            f"ImageNet at {root}: {folder} has {len(wnids)} WordNet-ID class folders, not {NUM_CLASSES}. A partial "
            f"copy needs {META_FILE} or {DEVKIT} in ROOT to map folders to the standard class indices. "
            f"Expected layout: {LAYOUT}."
        )
    try:
        return ImageFolder(str(folder), transform=imagenet_transform(), allow_empty=True)
    except (FileNotFoundError, OSError) as error:
        raise DataNotFoundError(
            f"ImageNet at {folder} could not be read ({error}). Expected layout: {LAYOUT}."
        ) from None


def check_imagenet_root(root: str | Path | None, split: str = "val") -> Path:
    """The root as a path when it holds ``split`` in an accepted layout; ``DataNotFoundError`` otherwise."""
    if split not in ARCHIVES:
        raise ValueError(f"split must be one of {', '.join(ARCHIVES)}; got {split!r}")
    if root is None:
        raise DataNotFoundError(f"ImageNet needs data_root (none given). Expected layout: {LAYOUT}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"ImageNet not found: {path} is not a folder. Expected layout: {LAYOUT}.")
    if not _split_present(path, split):
        flat = (path / split).is_dir() and next((path / split).glob("*.JPEG"), None) is not None
        hint = (
            f" {path / split} holds images but no class folders: put {DEVKIT} and {ARCHIVES[split]} in ROOT "
            f"(and move the unsorted folder away) so torchvision sorts them into <wnid> folders."
            if flat
            else ""
        )
        raise DataNotFoundError(
            f"ImageNet at {path} has no {split} split: neither {path / split}/<wnid>/*.JPEG nor "
            f"{ARCHIVES[split]} (with {META_FILE} or {DEVKIT}).{hint} Expected layout: {LAYOUT}."
        )
    return path


def load_imagenet_split(root: str | Path | None, split: str) -> Any:
    """The ``split`` ("val" or "train") as a dataset of (image (3, 224, 224) in [0, 1], standard class index).

    Raises:
        DataNotFoundError: the root is missing or matches neither accepted layout.
    """
    path = check_imagenet_root(root, split)
    dataset = _torchvision_split(path, split) if _has_meta(path) else _folder_split(path, split)
    if len(dataset) == 0:
        raise DataNotFoundError(f"ImageNet at {path}: the {split} folders hold no images. Expected layout: {LAYOUT}.")
    return dataset


class ImageNetDataModule(VictimDataModule):
    """ILSVRC2012 at 224 px (GGL, Li et al. CVPR 2022, arXiv 2203.15696, ImageNet setting).

    Args:
        data_root: the ImageNet root (see the module docstring for the two accepted layouts).
        normalization: ``"ggl"`` (mean = std = 0.5, default) or ``"imagenet"`` (torchvision's statistics).
        batch_size, num_workers, seed: see ``VictimDataModule``.

    Splits: ``victims`` = validation split (50,000 images), ``public`` = train split when present; items are
    (image (3, 224, 224) in [0, 1], class index in 0-999).

    Example:
        >>> dm = ImageNetDataModule("/data/imagenet")  # doctest: +SKIP
        >>> images, labels = dm.victim_batch(dm.victim_indices(1, seed=0))  # (1, 3, 224, 224), (1,)
    """

    name = "imagenet"
    num_classes = NUM_CLASSES
    image_shape = (3, 224, 224)

    def __init__(
        self,
        data_root: str | Path | None = None,
        normalization: str = "ggl",
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
        self.save_hyperparameters()
        self.data_root = data_root
        self.normalization = NORMALIZATIONS[normalization]

    def prepare_data(self) -> None:
        """Check that the validation split is there (torchvision unpacks its archive on first use)."""
        check_imagenet_root(self.data_root, "val")

    def setup(self, stage: str | None = None) -> None:
        if self.victims is None:
            self.victims = load_imagenet_split(self.data_root, "val")
        if self.public is None and (stage == "fit" or (stage is None and self.has_public_split())):
            self.public = load_imagenet_split(self.data_root, "train")

    def has_public_split(self) -> bool:
        """Whether the train split is present under ``data_root``."""
        return self.data_root is not None and _split_present(Path(self.data_root).expanduser(), "train")
