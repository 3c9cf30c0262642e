"""Tiny on-disk copies of CelebA and ImageNet in the real layouts, written with PIL for each test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ggl.data.celeba import ANNOTATION_FILES, ATTRIBUTES

LANDMARKS = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
CELEBA_SPLITS = (0, 0, 0, 0, 1, 2, 2, 2, 0, 2)
"""list_eval_partition.txt of the fake CelebA: 5 train, 1 valid, 4 test images."""


def _colour(index: int) -> tuple[int, int, int]:
    return (20 * index + 10, 200 - 15 * index, 60 + 10 * index)


def write_celeba(root: Path) -> np.ndarray:
    """Write a 10-image CelebA in torchvision's layout under ``root/celeba``; returns the attribute matrix."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    attributes = rng.choice([-1, 1], size=(len(CELEBA_SPLITS), len(ATTRIBUTES)))
    names = [f"{i + 1:06d}.jpg" for i in range(len(CELEBA_SPLITS))]
    for index, name in enumerate(names):
        Image.new("RGB", (178, 218), _colour(index)).save(folder / "img_align_celeba" / name, quality=95)
    count = f"{len(names)}\n"
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attributes)]
    (folder / "list_attr_celeba.txt").write_text(count + " ".join(ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names, CELEBA_SPLITS)))
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i % 3 + 1}\n" for i, n in enumerate(names)))
    (folder / "list_bbox_celeba.txt").write_text(
        count + "image_id x_1 y_1 width height\n" + "".join(f"{n} 95 71 226 313\n" for n in names)
    )
    landmarks = " ".join(f"{part}_{axis}" for part in LANDMARKS for axis in "xy")
    (folder / "list_landmarks_align_celeba.txt").write_text(
        count + landmarks + "\n" + "".join(f"{n} 69 109 106 113 77 142 73 152 108 154\n" for n in names)
    )
    return attributes


def accept_celeba_checksums(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's CelebA accept the fake annotation files (it checks the MD5s of the real release)."""
    from torchvision.datasets import CelebA

    table = [
        (file_id, hashlib.md5((folder / name).read_bytes()).hexdigest() if name in ANNOTATION_FILES else md5, name)
        for file_id, md5, name in CelebA.file_list
    ]
    monkeypatch.setattr(CelebA, "file_list", table)


@pytest.fixture
def celeba_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    attributes = write_celeba(tmp_path)
    accept_celeba_checksums(tmp_path / "celeba", monkeypatch)
    return tmp_path, attributes


def write_imagenet_images(
    folder: Path, wnids: list[str], per_class: int = 1, size: tuple[int, int] = (300, 260)
) -> None:
    """``folder/<wnid>/*.JPEG`` images whose colour encodes the class position in ``wnids``."""
    for position, wnid in enumerate(wnids):
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            colour = (10 + 40 * position, 120, 250 - 40 * position)
            Image.new("RGB", size, colour).save(folder / wnid / f"ILSVRC2012_val_{position:04d}{k}.JPEG")


def write_imagenet_meta(root: Path, wnids: list[str]) -> None:
    """torchvision's ``meta.bin``: (wnid -> class names, validation wnids)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save(({wnid: (f"class {wnid}",) for wnid in wnids}, list(wnids)), root / "meta.bin")
