"""CelebA faces (Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015, arXiv 1411.7766).

GGL's face setting: the victims are images of the *test* split with a binary attribute as the label (``Male``
by default, attribute 20), the generative prior is trained on the *train* split. Images are the aligned and
cropped 178x218 faces, center-cropped to 178x178 and resized to 32 or 64 px; the model input is normalised with
mean = std = 0.5 per channel, as in GGL's code.

Expected layout (torchvision's, read with ``torchvision.datasets.CelebA(root, download=False)``)::

    ROOT/celeba/img_align_celeba/000001.jpg ... 202599.jpg
    ROOT/celeba/list_attr_celeba.txt
    ROOT/celeba/list_eval_partition.txt
    ROOT/celeba/identity_CelebA.txt
    ROOT/celeba/list_bbox_celeba.txt
    ROOT/celeba/list_landmarks_align_celeba.txt

torchvision checks the MD5 of the five text files even without downloading, so they must be the original ones.
The dataset is for non-commercial research only (see the CelebA agreement); it is never shipped or downloaded here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.fl.normalization import Normalization

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
"""The 40 binary attributes of ``list_attr_celeba.txt``, in file order (``Male`` is index 20)."""

ANNOTATION_FILES: tuple[str, ...] = (
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)
IMAGE_FOLDER = "img_align_celeba"
IMAGE_SIZES = (32, 64)
LAYOUT = (
    "ROOT/celeba/img_align_celeba/*.jpg (202,599 aligned faces) and, next to it, "
    + ", ".join(f"ROOT/celeba/{name}" for name in ANNOTATION_FILES)
    + " (the original files of the CelebA release, as torchvision's CelebA dataset expects them; "
    "torchvision verifies their MD5 checksums)"
)


class _SelectAttribute:
    """Target transform: the 40-vector of {0, 1} attributes -> the chosen attribute as an int (picklable)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, attributes: torch.Tensor) -> int:
        return int(attributes[self.index])


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")


def celeba_transform(image_size: int) -> Any:
    """PIL face -> float tensor (3, S, S) in [0, 1]: center crop 178x178, then resize to ``image_size``."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Lambda(_to_rgb),
            transforms.CenterCrop(178),
            transforms.Resize(image_size, antialias=True),
            transforms.ToTensor(),
        ]
    )


def _dataset_root(root: str | Path | None) -> Path:
    """The torchvision root (the folder holding ``celeba/``); ROOT/celeba itself is accepted too."""
    if root is None:
        raise DataNotFoundError(f"CelebA needs data_root (none given). Expected layout: {LAYOUT}.")
    path = Path(root).expanduser()
    if not (path / "celeba").is_dir() and path.name == "celeba" and (path / ANNOTATION_FILES[0]).is_file():
        path = path.parent
    folder = path / "celeba"
    if not folder.is_dir():
        raise DataNotFoundError(f"CelebA not found: {folder} is not a folder. Expected layout: {LAYOUT}.")
    missing = [name for name in ANNOTATION_FILES if not (folder / name).is_file()]
    images = folder / IMAGE_FOLDER
    if not images.is_dir() or next(images.glob("*.jpg"), None) is None:
        missing.append(f"{IMAGE_FOLDER}/*.jpg")
    if missing:
        raise DataNotFoundError(
            f"CelebA at {folder} is incomplete: missing {', '.join(missing)}. Expected layout: {LAYOUT}."
        )
    return path


def _corrupted_files(folder: Path) -> list[str]:
    from torchvision.datasets import CelebA
    from torchvision.datasets.utils import check_integrity

    return [
        name
        for _, md5, name in CelebA.file_list
        if name in ANNOTATION_FILES and not check_integrity(str(folder / name), md5)
    ]


def load_celeba_split(root: str | Path | None, split: str, attribute: str, image_size: int) -> Any:
    """``torchvision.datasets.CelebA`` for ``split`` yielding (image (3, S, S) in [0, 1], attribute label in {0, 1}).

    Raises:
        DataNotFoundError: the root is missing, incomplete or its annotation files are corrupted or malformed.
    """
    from torchvision.datasets import CelebA

    path = _dataset_root(root)
    folder = path / "celeba"
    try:
        dataset = CelebA(
            str(path),
            split=split,
            target_type="attr",
            transform=celeba_transform(image_size),
            target_transform=_SelectAttribute(ATTRIBUTES.index(attribute)),
            download=False,
        )
    except RuntimeError:
        corrupted = _corrupted_files(folder)
        raise DataNotFoundError(
            f"CelebA at {folder} failed torchvision's integrity check: "
            f"{', '.join(corrupted) or 'an annotation file'} does not have the original MD5 checksum "
            f"(replace it with the file of the CelebA release). Expected layout: {LAYOUT}."
        ) from None
    except (ValueError, IndexError) as error:
        raise DataNotFoundError(
            f"CelebA at {folder} has a malformed annotation file ({error}). Expected layout: {LAYOUT}."
        ) from None
    header = [name for name in dataset.attr_names if name]
    if list(ATTRIBUTES) != header[: len(ATTRIBUTES)] or dataset.attr.shape[1] != len(ATTRIBUTES):
        raise DataNotFoundError(
            f"CelebA at {folder}: list_attr_celeba.txt does not list the 40 attributes in the usual order "
            f"(found {header[:5]}...). Expected layout: {LAYOUT}."
        )
    if len(dataset) == 0:
        raise DataNotFoundError(f"CelebA at {folder}: the {split!r} split of list_eval_partition.txt is empty.")
    first = folder / IMAGE_FOLDER / dataset.filename[0]
    if not first.is_file():
        raise DataNotFoundError(f"CelebA at {folder}: image {first} listed for the {split!r} split is missing.")
    return dataset


class CelebADataModule(VictimDataModule):
    """CelebA faces with one binary attribute as the label (GGL, Li et al. CVPR 2022, arXiv 2203.15696).

    Args:
        data_root: folder holding ``celeba/`` (torchvision layout, see the module docstring), or ``celeba/`` itself.
        image_size: 32 (GGL's setting, default) or 64.
        attribute: the binary label, one of ``ATTRIBUTES`` (default ``"Male"``, the paper's target).
        batch_size, num_workers, seed: see ``VictimDataModule``.

    Splits: ``public`` = train split (162,770 faces), ``victims`` = test split (19,962 faces); items are
    (image (3, S, S) in [0, 1], label in {0, 1}).

    Example:
        >>> dm = CelebADataModule("/data", image_size=32)  # doctest: +SKIP
        >>> images, labels = dm.victim_batch(dm.victim_indices(4, seed=0))  # (4, 3, 32, 32), (4,)
    """

    name = "celeba"
    num_classes = 2
    normalization = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def __init__(
        self,
        data_root: str | Path | None = None,
        image_size: int = 32,
        attribute: str = "Male",
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {', '.join(map(str, IMAGE_SIZES))}; got {image_size!r}")
        if not isinstance(attribute, str) or attribute not in ATTRIBUTES:
            raise ValueError(
                f"attribute must be one of the 40 CelebA attributes: {', '.join(ATTRIBUTES)}; got {attribute!r}"
            )
        self.save_hyperparameters()
        self.data_root = data_root
        self.image_size = image_size
        self.attribute = attribute
        self.image_shape = (3, image_size, image_size)
        self.classes = (f"not {attribute}", attribute)

    def prepare_data(self) -> None:
        """Check the files once, before any split is built (nothing is downloaded)."""
        _dataset_root(self.data_root)

    def setup(self, stage: str | None = None) -> None:
        if self.victims is None:
            self.victims = load_celeba_split(self.data_root, "test", self.attribute, self.image_size)
        if stage in (None, "fit") and self.public is None:
            self.public = load_celeba_split(self.data_root, "train", self.attribute, self.image_size)
